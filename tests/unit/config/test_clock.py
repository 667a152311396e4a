"""One clock per run: built from settings, the same in every process, the wall clock by default."""

import pytest

from opsloop.config.clock import Clock
from opsloop.config.settings import Settings

pytestmark = pytest.mark.unit


def test_default_settings_give_the_wall_clock():
    clock = Settings.from_env({}).clock()
    assert clock.is_wall and clock.env() == {}
    assert "OPSLOOP_CLOCK_SPEED" not in Settings.from_env({}).kafka_env()


def test_a_twin_clock_travels_to_child_processes_and_reads_the_same_there():
    wall = [1000.0]
    clock = Clock.starting(epoch_s=959_990_400.0, speed=1440.0, wall=lambda: wall[0])
    child = Settings.from_env(clock.env()).clock()
    assert (child.epoch_s, child.anchor_s, child.speed) == (clock.epoch_s, clock.anchor_s, clock.speed)
    parent = Settings.from_env(clock.env())
    assert parent.kafka_env()["OPSLOOP_CLOCK_SPEED"] == "1440.0"
    wall[0] += 60.0  # a wall minute is a twin day
    assert clock() == pytest.approx(959_990_400.0 + 86_400)
    assert clock.wall_s(86_400) == 60.0


def test_a_clock_speed_must_be_positive():
    with pytest.raises(ValueError, match="OPSLOOP_CLOCK_SPEED"):
        Settings.from_env({"OPSLOOP_CLOCK_SPEED": "-2"})
