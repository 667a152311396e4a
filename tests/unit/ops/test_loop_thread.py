import threading

import pytest

from opsloop.ops.loop_thread import LoopThread

pytestmark = pytest.mark.unit


def test_a_server_that_cannot_listen_fails_start_with_its_cause():
    async def listen():
        raise OSError("address already in use")

    with pytest.raises(RuntimeError, match="meter on :502 did not start: address already in use") as raised:
        LoopThread(listen, "meter on :502", "t-fail").start(5)
    assert isinstance(raised.value.__cause__, OSError)


def test_callbacks_run_on_the_servers_thread_and_stop_closes_it_there():
    seen = {}
    done = threading.Event()

    async def listen():
        seen["listen"] = threading.current_thread().name

    async def close():
        seen["close"] = threading.current_thread().name

    server = LoopThread(listen, "plant", "t-loop", close=close).start(5)
    server.call_soon(lambda: (seen.setdefault("callback", threading.current_thread().name), done.set()))
    assert done.wait(5)
    server.stop(5)
    assert seen == {"listen": "t-loop", "callback": "t-loop", "close": "t-loop"}
    server.call_soon(lambda: seen.setdefault("late", "ran"))  # stopped: nothing runs, nothing raises
    assert "late" not in seen
