"""The `opsloop` command. Settings come from ``OPSLOOP_*`` env vars; flags override a few."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path

from opsloop.config.settings import Settings

BUNDLED_DATA = Path(__file__).resolve().parent / "data" / "taylor_demand_mw.csv"


def _local_kafka(settings: Settings, secure: bool = False):
    from opsloop.ops.kafka import LocalKafka

    state_dir = settings.data_dir / ("kafka-secure" if secure else "kafka")
    return LocalKafka(settings.cache_dir, state_dir, port=settings.kafka_port, secure=secure)


def cmd_up(settings: Settings, args) -> int:
    kafka = _local_kafka(settings, secure=args.secure)
    print(kafka.start())
    if args.secure:  # the local broker's super user sets it up; every agent gets its own principal
        settings = kafka.client_settings(settings, "admin")
    if not args.no_topics:
        cmd_topics(settings, argparse.Namespace(action="create"))
        if args.secure:
            cmd_acl(settings, argparse.Namespace(action="apply", principal=None))
    if args.secure:
        print(f"TLS + SASL/SCRAM on {kafka.bootstrap}; CA {kafka.ca_file}. Each principal's client settings "
              f"(OPSLOOP_KAFKA_*, the password by file): {kafka.secure_dir / 'users'}/<principal>.env")
    if not args.no_pcs:
        from opsloop.ops.pcs_sim import start_background

        print(start_background(kafka.client_settings(settings, "source") if args.secure else settings))
    return 0


def cmd_down(settings: Settings, args) -> int:
    from opsloop.ops.pcs_sim import stop_background

    print(stop_background(settings))
    for secure in (False, True):
        kafka = _local_kafka(settings, secure=secure)
        if secure and kafka.pid() is None:
            continue
        print(kafka.stop())
    return 0


def cmd_secure_init(settings: Settings, args) -> int:
    """Certificates and passwords for a secure deployment (docker-compose.secure.yml), never committed."""
    from opsloop.config.access import principals
    from opsloop.ops.kafka import write_private, make_certificates, make_passwords

    directory = args.dir or settings.data_dir / "compose-secrets"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _, keystore_password = make_certificates(directory, tuple(args.host or ["kafka", "localhost"]))
    new = make_passwords(directory, principals())
    write_private(directory / "broker.creds", keystore_password)  # the Kafka image reads keystore passwords by file
    admin = (directory / "admin.password").read_text().strip()
    write_private(directory / "compose.env", f"OPSLOOP_KAFKA_ADMIN_PASSWORD={admin}\n")
    write_private(directory / "admin-client.properties", "\n".join([  # the broker's healthcheck, Kafka's own tools
        "security.protocol=SASL_SSL", "sasl.mechanism=PLAIN", "ssl.truststore.type=PEM",  # admin: PLAIN, static
        "ssl.truststore.location=/etc/kafka/secrets/ca.pem",
        "sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="admin" password="{admin}";', ""]))
    print(f"{directory}: ca.pem, broker.p12, one password file per principal ({len(new)} new), compose.env, "
          "admin-client.properties")
    return 0


def cmd_acl(settings: Settings, args) -> int:
    from opsloop.config.access import plan

    grants = plan(settings, [args.principal] if args.principal else None)
    if args.action == "plan":
        for grant in grants:
            print(grant)
        return 0
    from opsloop.connectors.kafka import apply_acls, upsert_scram_users

    if getattr(args, "users", None):  # SCRAM users from <dir>/<principal>.password (names only are printed)
        from opsloop.config.access import PRINCIPALS

        files = {name: [args.users / f"{name}.password", args.users / f"kafka-{name}"] for name in PRINCIPALS}
        passwords = {name: path.read_text().strip() for name, paths in files.items() for path in paths[:1]
                     if path.exists()}
        passwords.update({name: paths[1].read_text().strip() for name, paths in files.items()
                          if name not in passwords and paths[1].exists()})
        print(f"SCRAM users: {', '.join(upsert_scram_users(settings, passwords)) or 'none found'}")
    print(f"applied {apply_acls(settings, grants)} ACLs for {len({g.principal for g in grants})} principals")
    return 0


def cmd_policy(settings: Settings, args) -> int:
    from opsloop.ops.policy import check

    return check(args.file or settings.policy)


def cmd_pcs_sim(settings: Settings, args) -> int:
    from opsloop.config.site import load_site
    from opsloop.ops.pcs_sim import serve_forever

    return serve_forever(settings, load_site(settings.topology), telemetry_s=args.telemetry_s, meter_url=args.meter_url)


def cmd_twin(settings: Settings, args) -> int:
    from opsloop.ops import twin

    return twin.main(settings, args.site, args.speed, args.data, column=args.column, sample_s=args.sample_s,
                     poll_s=args.poll_s, prometheus_port=args.prometheus_port, prometheus_host=args.prometheus_host,
                     slurm=not args.no_slurm,
                     storm_seed=args.seed, failures=args.failures, background=args.background,
                     horizon_s=int(args.horizon_h * 3600), sunspec_port=args.sunspec_port, snmp_dir=args.snmp_dir,
                     bacnet_port=args.bacnet_port, publish=not args.no_telemetry, slurm_every_s=args.slurm_every_s,
                     jobs_per_day=args.jobs_per_day, jobs_seed=args.jobs_seed, queue_every_s=args.queue_every_s,
                     weather_day_sd_c=args.weather_day_sd, weather_seed=args.weather_seed)


def cmd_slurm(settings: Settings, args) -> int:
    from opsloop.config.site import load_site
    from opsloop.ops.slurm import LocalSlurm

    rest_only = [flag for flag, value in (("--rest-host", args.rest_host), ("--rest-port", args.rest_port),
                                          ("--token-file", args.token_file)) if value is not None]
    if rest_only and not (args.action == "up" and args.rest):
        print(f"opsloop slurm: {', '.join(rest_only)} only with `up --rest`", file=sys.stderr)
        return 2
    if args.foreground and args.action != "up":
        print("opsloop slurm: --foreground only with `up`", file=sys.stderr)
        return 2
    cluster = LocalSlurm.for_site(settings.data_dir / "slurm", load_site(settings.topology), nodes=args.nodes)
    rest = {"rest": args.rest, "rest_host": args.rest_host or "127.0.0.1", "rest_port": args.rest_port}
    if args.action == "up" and args.foreground:  # a container's main process: up until SIGTERM, then down
        import signal

        from opsloop.ops.slurm import serve

        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        return serve(cluster, stop, token_file=args.token_file, token_lifespan_s=args.token_lifespan_s,
                     out=lambda line: print(line, flush=True), **rest)
    if args.action == "up":
        print(cluster.start(**rest))
        print(f"export SLURM_CONF={cluster.layout.conf}")
        if args.rest and args.token_file is not None:  # the token stays out of the terminal and the logs
            from opsloop.ops.slurm import write_token

            write_token(args.token_file, cluster.rest_token(lifespan_s=args.token_lifespan_s))
            print(f"export OPSLOOP_SLURM_BACKEND=slurmrestd OPSLOOP_SLURM_REST_URL={cluster.rest_url} "
                  f"OPSLOOP_SLURM_JWT_FILE={args.token_file}")
        elif args.rest:  # what the slurmrestd backend needs (a local test cluster: the token may be printed)
            print(f"export OPSLOOP_SLURM_REST_URL={cluster.rest_url} SLURM_JWT={cluster.rest_token()}")
    elif args.action == "down":
        print(cluster.stop())
    else:
        print(cluster.run("sinfo") if cluster.running() else "Slurm is not running")
    return 0


def cmd_llm_balancer(settings: Settings, args) -> int:
    from opsloop.ops.llm_balancer import compose_config_text, serve_forever

    if args.compose_config:
        print(compose_config_text(), end="")
        return 0
    return serve_forever(settings.data_dir / "haproxy", args.port, args.metrics_port, args.server or [])


def cmd_topics(settings: Settings, args) -> int:
    from opsloop.connectors.kafka import apply_catalog
    from opsloop.config.catalog import load_catalog

    specs = load_catalog(settings.topics_file)
    if args.action == "create":
        for line in apply_catalog(settings, specs.values()):
            print(line)
    else:
        for spec in specs.values():
            print(f"{settings.topic(spec.name):<22} {spec.record:<15} key={spec.key:<12} "
                  f"partitions={spec.partitions:<3} retention_h={spec.retention_hours or 'forever':<6} {spec.cleanup}")
    return 0


def cmd_worker(settings: Settings, args) -> int:
    from opsloop.streams import worker

    stop = threading.Event()
    feeders = []
    if args.sources:  # the live sources of a config file, in this process beside the agents
        from opsloop.ops import sources

        feeders.append(threading.Thread(target=sources.run, args=(settings, None, args.sources), kwargs={"stop": stop},
                                        name="sources"))
        for feeder in feeders:
            feeder.start()
    try:
        results = worker.run(settings, worker.parse_agents(args.agents), exit_when_idle=args.exit_when_idle,
                             stop=stop)
    finally:
        stop.set()
        for feeder in feeders:
            feeder.join(60)
    for name, stats in results.items():
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    return 0


def cmd_source(settings: Settings, args) -> int:
    from opsloop.ops import sources

    if args.list or not (args.kind or args.config):
        print(sources.list_kinds())
        return 0
    if not args.config:
        print("opsloop source: --config FILE is required to run a source", file=sys.stderr)
        return 2
    for name, health in sources.run(settings, args.kind, args.config, args.name).items():
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in health.items()))
    return 0


def cmd_replay(settings: Settings, args) -> int:
    from opsloop.config.site import load_site
    from opsloop.connectors.replay import replay, replay_spec

    spec = replay_spec(load_site(args.site or settings.topology))
    stats = replay(settings, spec, Path(args.data), speedup=args.speedup, start=args.start, days=args.days,
                   progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"replayed {stats.rows} rows as {stats.points} points ({stats.skipped} empty cells skipped) "
          f"in {stats.wall_s:.1f}s")
    return 0


def cmd_sql(settings: Settings, args) -> int:
    from opsloop.connectors.duckdb import format_table, query

    columns, rows = query(settings.duckdb_file, args.query)
    print(format_table(columns, rows, max_rows=args.max_rows))
    return 0


def cmd_noc(settings: Settings, args) -> int:
    if getattr(args, "noc_command", None) == "user":
        from opsloop.ops.noc_users import run_user_command

        return run_user_command(settings, args)
    from opsloop.ops.noc import serve

    return serve(settings, args.host, args.port or settings.noc_port, with_views=args.with_views)


def cmd_schemas(settings: Settings, args) -> int:
    from opsloop.schemas import compat

    return compat.main()


def cmd_demo(settings: Settings, args) -> int:
    if args.replay:
        from opsloop.ops.demo import run_demo

        return run_demo(settings, data=Path(args.data), days=args.days or 7.0, secure=args.secure)
    from opsloop.ops.twin_demo import run_twin_demo

    try:
        run_twin_demo(settings, days=args.days or 6.0, speed=args.speed, warmup_days=args.warmup_days, data=Path(args.data),
                      failures=args.failures, secure=args.secure)
    except KeyboardInterrupt:
        print("opsloop demo: interrupted; what it started is stopped", file=sys.stderr)
        return 130
    return 0


def cmd_bench(settings: Settings, args) -> int:
    from opsloop.ops.bench.run import run_bench

    if args.suite in ("all", "rollup"):
        run_bench(settings, events=args.events, secure=not args.no_secure)
    if args.suite in ("all", "scale"):  # Kafka's own limit, the rollup in 1, 2 and 4 processes, exactly-once
        from opsloop.ops.bench.scale import run_scale_bench

        run_scale_bench(settings, events=args.events)
    if args.suite in ("all", "alarms"):
        from opsloop.ops.bench.alarms import run_alarm_bench

        run_alarm_bench(settings)
    if args.suite == "peaks":  # "all" runs it from ops/bench/run.py
        from opsloop.ops.bench import peaks as bench_peaks

        print("\n".join(bench_peaks.run(settings)))
    if args.suite in ("all", "loop"):
        from opsloop.ops.bench.loop import run_loop_bench

        run_loop_bench(settings, rate=args.loop_rate, seconds=args.loop_seconds, speed=args.loop_speed)
    if args.suite in ("all", "sources"):
        from opsloop.ops.bench import field_sources, host_sources
        from opsloop.ops.bench.sources import run_sources_bench

        run_sources_bench(settings)
        print("\n".join(host_sources.run(settings)))  # logs, hwmon and slurm-queue sources
        print("\n".join(field_sources.run(settings)))  # sunspec and snmp, one process polling N devices
    if args.suite in ("all", "twin"):
        from opsloop.ops.bench.twin import run_twin_bench

        run_twin_bench(settings)
    if args.suite == "flex":  # needs Slurm, llama-cpp-python, HAProxy and hey here: not part of "all"
        from opsloop.ops.bench.flex import run_flex_bench

        run_flex_bench(settings)
    if args.suite in ("all", "noc"):
        from opsloop.ops.bench import noc as bench_noc, noc_approvals

        print("\n".join(bench_noc.run(settings)))  # each page's server time, each page's queries
        print("\n".join(noc_approvals.run(settings)))  # an approval's click to the verdict on the page (a broker)
    return 0


def cmd_eval(settings: Settings, args) -> int:
    args.settings = settings  # evals that need the endpoint settings (narrate) read them here
    return args.eval_main(args)


def _add_evals(sub) -> None:
    """`opsloop eval <name>`: each ops/evals/<name>.py exposes add_arguments(parser) and main(args) -> int."""
    import importlib

    ev = sub.add_parser("eval", help="score a model on real data").add_subparsers(dest="eval_name", required=True)
    for name, doc in [("anomaly", "NAB scores of the anomaly detector on a NAB-layout directory"),
                      ("alarms", "the alarm filter on a labelled storm corpus generated on a site topology"),
                      ("narrate", "SOP retrieval hit@1/hit@3, grounding and latency of the narration"),
                      ("peaks", "peak shaving: no control, reactive, planner and oracle per billing month"),
                      ("peaks-suite", "peak shaving on every curve we have: weekly and monthly billing, MASE"),
                      ("forecast-queue", "the load forecast and billed peaks with and without the Slurm queue, on the twin"),
                      ("forecast-weather", "the load forecast and billed peaks with and without the temperature forecast, "
                                           "on the twin"),
                      ("rul", "battery remaining-useful-life dates and bands on generated ageing trajectories"),
                      ("cooling", "cooling kWh saved by the guarded supply-air setpoint loop on the twin, over BACnet")]:
        module = importlib.import_module(f"opsloop.ops.evals.{name.replace('-', '_')}")
        p = ev.add_parser(name, help=doc)
        module.add_arguments(p)
        p.set_defaults(func=cmd_eval, eval_main=module.main)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opsloop", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the local Kafka broker (KRaft) and create the topics")
    up.add_argument("--no-topics", action="store_true", help="start the broker only")
    up.add_argument("--no-pcs", action="store_true", help="do not start the PCS simulator")
    up.add_argument("--secure", action="store_true",
                    help="TLS + SASL/SCRAM + ACLs: certificates and one user per agent generated under the data dir")
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the local Kafka broker").set_defaults(func=cmd_down)
    sl = sub.add_parser("slurm", help="start, stop or show the local Slurm (one node, or --nodes N; fake GPUs)")
    sl.add_argument("action", choices=["up", "down", "status"])
    sl.add_argument("--nodes", type=int, default=None,
                    help="up: this many nodes (node1..nodeN, one slurmd each, on this host); default 1, or the size "
                         "the cluster was started with")
    sl.add_argument("--rest", action="store_true", help="also start slurmrestd (JWT auth, runs as nobody)")
    sl.add_argument("--rest-host", help="with --rest: the address slurmrestd listens on (default 127.0.0.1; 0.0.0.0 "
                                        "serves other containers, every request still needs a token)")
    sl.add_argument("--rest-port", type=int, help="with --rest: slurmrestd's port (default: a free one)")
    sl.add_argument("--token-file", type=Path,
                    help="with --rest: write a JWT for slurmrestd to this file (owner-only, for "
                         "OPSLOOP_SLURM_JWT_FILE) instead of printing it; --foreground renews it at half its lifespan")
    sl.add_argument("--token-lifespan-s", type=int, default=86_400, help="the token's lifespan (default a day)")
    sl.add_argument("--foreground", action="store_true",
                    help="up: stay in the foreground until SIGTERM or SIGINT, then stop Slurm (a container's main "
                         "process); exits 1 if a daemon dies")
    sl.set_defaults(func=cmd_slurm)
    lb = sub.add_parser("llm-balancer", help="run HAProxy in front of LLM servers (two local llama.cpp ones by "
                                             "default) for the LLM sink; until Ctrl-C")
    lb.add_argument("--server", action="append", metavar="NAME=HOST:PORT",
                    help="a server of backend llm (repeat; the first takes every request at first)")
    lb.add_argument("--port", type=int, default=8000, help="the API frontend's port")
    lb.add_argument("--metrics-port", type=int, default=8405, help="the Prometheus exporter's port")
    lb.add_argument("--compose-config", action="store_true",
                    help="print docker-compose's balancer configuration (ops/llm/haproxy.cfg) and exit")
    lb.set_defaults(func=cmd_llm_balancer)
    topics = sub.add_parser("topics", help="apply or list the topic catalog (config/topics.yaml)")
    topics.add_argument("action", choices=["create", "list"])
    topics.set_defaults(func=cmd_topics)
    acl = sub.add_parser("acl", help="print or apply the Kafka ACLs of every agent's principal (config/access.py)")
    acl.add_argument("action", choices=["plan", "apply"])
    acl.add_argument("--principal", help="only this principal's ACLs")
    acl.add_argument("--users", type=Path, help="apply: also create or update each principal's SCRAM user from "
                                               "<dir>/<principal>.password (or <dir>/kafka-<principal>, a secret)")
    acl.set_defaults(func=cmd_acl)
    si = sub.add_parser("secure-init", help="make a CA, the broker's certificate and one password per principal "
                                            "for a secure deployment (docker-compose.secure.yml)")
    si.add_argument("--dir", type=Path, help="where (default: <data dir>/compose-secrets)")
    si.add_argument("--host", action="append", help="broker host name for the certificate (default: kafka, localhost)")
    si.set_defaults(func=cmd_secure_init)
    w = sub.add_parser("worker", help="run agents (all by default)")
    w.add_argument("--agents", help="comma-separated agent names: rollup, views, anomaly, ...")
    w.add_argument("--exit-when-idle", action="store_true", help="stop once every input is caught up and idle")
    w.add_argument("--sources", type=Path, help="also run every live source of this config file (ops/sources/*.yaml)")
    w.set_defaults(func=cmd_worker)
    src = sub.add_parser("source", help="read a live site system (Prometheus, Modbus, SNMP, ...) into Kafka")
    src.add_argument("kind", nargs="?", help="source kind (see --list; default: every source in the config)")
    src.add_argument("--config", type=Path, help="sources config file (examples in ops/sources/)")
    src.add_argument("--name", help="run only the source of this name")
    src.add_argument("--list", action="store_true", help="list the source kinds")
    src.set_defaults(func=cmd_source)
    r = sub.add_parser("replay", help="stream a CSV or Parquet time series into telemetry.raw")
    r.add_argument("--data", required=True, help="CSV or Parquet file")
    r.add_argument("--site", type=Path, help="site file with a replay: block (default: OPSLOOP_TOPOLOGY)")
    r.add_argument("--start", help="first event time to replay (ISO 8601)")
    r.add_argument("--days", type=float, help="days of data to replay")
    r.add_argument("--speedup", type=float, help="event-time seconds per wall second (default: as fast as possible)")
    r.set_defaults(func=cmd_replay)
    q = sub.add_parser("sql", help="run a query on the DuckDB views and print a table")
    q.add_argument("query")
    q.add_argument("--max-rows", type=int, default=50)
    q.set_defaults(func=cmd_sql)
    noc = sub.add_parser("noc", help="serve the NOC page (DuckDB views; approve or reject actions)")
    noc.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    noc.add_argument("--port", type=int, help="port (default: OPSLOOP_NOC_PORT, 8088)")
    noc.add_argument("--with-views", action="store_true",
                     help="also run the views agent in this process: the page reads while it writes")
    noc.set_defaults(func=cmd_noc)
    noc_sub = noc.add_subparsers(dest="noc_command")
    nu = noc_sub.add_parser("user", help="NOC users (OPSLOOP_NOC_USERS_FILE): add, list, remove")
    nu_sub = nu.add_subparsers(dest="user_action", required=True)
    nu_add = nu_sub.add_parser("add", help="add a user; the password is read from the terminal or stdin")
    nu_add.add_argument("name")
    nu_add.add_argument("--role", required=True, choices=["viewer", "operator", "admin"],
                        help="viewer: sees the page; operator: also approves; admin: also sees the audit trail")
    nu_add.add_argument("--replace", action="store_true", help="set a new password or role for an existing user")
    nu_sub.add_parser("list", help="list users and roles")
    nu_rm = nu_sub.add_parser("remove", help="remove a user; their sessions end at their next request")
    nu_rm.add_argument("name")
    s = sub.add_parser("schemas", help="check schemas/ against their released versions")
    s.add_argument("action", choices=["check"])
    s.set_defaults(func=cmd_schemas)
    d = sub.add_parser("demo", help="the closed loop over a simulated week on the site twin, then what it measured")
    d.add_argument("--data", default=str(BUNDLED_DATA), help="load curve (timestamp,value CSV)")
    d.add_argument("--days", type=float, help="days measured after the warm-up (default 6: with it, a calendar "
                                                "week); with --replay, days replayed (default 7)")
    d.add_argument("--speed", type=float, default=1440.0, help="twin seconds per wall second (1440: a day a minute)")
    d.add_argument("--warmup-days", type=float, default=1.0, help="days the forecaster learns before the measured ones")
    d.add_argument("--failures", type=int, default=4, help="storm failures the twin injects")
    d.add_argument("--replay", action="store_true", help="the older demo: replay the data into the pipeline, no twin")
    d.add_argument("--secure", action="store_true", help="on the secure local broker (TLS, SASL/SCRAM, ACLs), every "
                                                         "agent as its own principal")
    d.set_defaults(func=cmd_demo)
    pol = sub.add_parser("policy", help="validate a guard-rail policy file")
    pol.add_argument("action", choices=["check"])
    pol.add_argument("file", nargs="?", type=Path, help="policy file (default: OPSLOOP_POLICY)")
    pol.set_defaults(func=cmd_policy)
    tw = sub.add_parser("twin", help="play the site: load from a real curve, cooling, the PCS's ESS power, Slurm "
                                     "jobs, injected failures; publishes as a live source, serves Prometheus text, "
                                     "SunSpec meters and SNMP PDU values")
    tw.add_argument("--site", type=Path, help="site file (default: OPSLOOP_TOPOLOGY)")
    tw.add_argument("--speed", type=float, default=60.0, help="twin seconds per wall second")
    tw.add_argument("--data", type=Path, help="timestamp,value CSV or Parquet (default: the bundled Taylor file)")
    tw.add_argument("--column", help="value column (default: the first one after the time)")
    tw.add_argument("--sample-s", type=float, default=60.0, help="twin seconds between samples")
    tw.add_argument("--poll-s", type=float, default=0.5, help="wall seconds between polls")
    tw.add_argument("--prometheus-port", type=int, help="serve the latest readings as Prometheus text here")
    tw.add_argument("--sunspec-port", type=int, help="serve the grid and facility meters as SunSpec (Modbus TCP) here")
    tw.add_argument("--bacnet-port", type=int,
                    help="serve the cooling plant (supply-air setpoint, zone inlets) as a BACnet/IP device on this UDP port")
    tw.add_argument("--snmp-dir", type=Path, help="write each PDU's SNMP objects to DIR/<pdu>.json for an snmpd "
                                                  "pass_persist script (README: Site twin)")
    tw.add_argument("--listen-host", "--prometheus-host", dest="prometheus_host", default="127.0.0.1",
                    help="address the Prometheus page and SunSpec meters listen on (0.0.0.0: every interface, "
                         "e.g. in a container)")
    tw.add_argument("--no-telemetry", action="store_true",
                    help="publish no telemetry: live sources read the twin's meters and page (ops/sources/twin.yaml)")
    tw.add_argument("--no-slurm", action="store_true", help="do not read job states from Slurm")
    tw.add_argument("--slurm-every-s", type=float, default=0.0,
                    help="twin seconds between reads of job states (default 0: every poll; one squeue or REST call each)")
    tw.add_argument("--jobs-per-day", type=float, default=0.0,
                    help="run a seeded queue of GPU jobs per Slurm partition (this many a day) and publish the "
                         "queue on slurm.queue (default 0: none)")
    tw.add_argument("--jobs-seed", type=int, default=0, help="seed of the job schedule")
    tw.add_argument("--queue-every-s", type=float, default=300.0,
                    help="twin seconds between snapshots of the job queue on slurm.queue")
    tw.add_argument("--weather-day-sd", type=float, default=0.0,
                    help="warm and cool spells: standard deviation of the daily mean temperature, degC (default 0: "
                         "the plain daily cycle); the forecast is served on the Prometheus port at /v1/forecast")
    tw.add_argument("--weather-seed", type=int, default=0, help="seed of the weather")
    tw.add_argument("--failures", type=int, default=0, help="failures to inject (storm generator)")
    tw.add_argument("--background", type=int, default=0, help="unrelated background alarms to inject")
    tw.add_argument("--horizon-h", type=float, default=24.0, help="twin hours the failures are spread over")
    tw.add_argument("--seed", type=int, default=0, help="storm generator seed")
    tw.set_defaults(func=cmd_twin)
    sim = sub.add_parser("pcs-sim", help="run the PCS simulator (Modbus TCP, SunSpec) on OPSLOOP_PCS_MODBUS")
    sim.add_argument("--telemetry-s", type=float, default=1.0, help="seconds between telemetry points")
    sim.add_argument("--meter-url", help="Prometheus page with the site load (opsloop_twin_facility_kw, e.g. the "
                                         "twin's --prometheus-port): the grid-limit mode follows it")
    sim.set_defaults(func=cmd_pcs_sim)
    b = sub.add_parser("bench", help="rollup and anomaly agent throughput against a bare confluent-kafka loop; "
                                     "approved action to PCS register write latency; closed-loop latency (loop)")
    b.add_argument("--events", type=int, default=200_000)
    b.add_argument("--suite", choices=["all", "rollup", "scale", "alarms", "peaks", "loop", "sources", "twin", "noc", "flex"], default="all")
    b.add_argument("--loop-rate", type=float, default=10_000, help="loop suite: twin points/s into the topology")
    b.add_argument("--loop-seconds", type=float, default=100.0, help="loop suite: how long the twin sends")
    b.add_argument("--loop-speed", type=float, default=60.0, help="loop suite: twin seconds per wall second")
    b.add_argument("--no-secure", action="store_true",
                   help="skip the rollup over TLS + SASL/SCRAM with ACLs (a second, secure broker)")
    b.set_defaults(func=cmd_bench)
    _add_evals(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"opsloop: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(settings, args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear one-line error for operators; --debug via OPSLOOP_LOG_LEVEL=debug
        if settings.log_level.lower() == "debug":
            raise
        print(f"opsloop {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
