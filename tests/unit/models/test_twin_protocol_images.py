"""The twin's protocol images, pure: a SunSpec meter device's register chain and a PDU's SNMP objects."""

import pytest

from opsloop.models import sunspec, sunspec_points
from opsloop.models.pdu_mib import PDU_ROOT, pdu_objects

pytestmark = pytest.mark.unit


def test_a_meter_image_is_a_sunspec_chain_of_the_common_model_and_its_meters():
    image = sunspec.meter_image(2)
    assert image[:2] == [0x5375, 0x6E53]
    chain, at = [], sunspec.BASE + 2
    while image[at - sunspec.BASE] != 0xFFFF:
        model, length = image[at - sunspec.BASE:at - sunspec.BASE + 2]
        chain.append((model, at))
        at += 2 + length
    assert chain == [(1, sunspec.COMMON_AT), (203, sunspec.meter_at(0)), (203, sunspec.meter_at(1))]
    assert at - sunspec.BASE + 2 == len(image)


@pytest.mark.parametrize("kw", [0.0, 1.5, 950.0, 38_123.4, -2_000.0])
def test_a_meter_written_with_a_reading_decodes_to_it_within_its_scale(kw):
    image = sunspec.meter_image(1)
    sunspec.put(image, sunspec.meter_at(0), sunspec.METER_ID, sunspec.meter_values(kw))
    values, problems, _ = sunspec_points.decode(203, sunspec.body(image, sunspec.meter_at(0), sunspec.METER_LEN),
                                                "grid")
    got = dict((m, v) for m, v, _ in values)
    step = 10 ** sunspec.scale_for(kw * 1000) / 1000
    assert problems == [] and got["grid_kw"] == pytest.approx(kw, abs=step / 2)


def test_a_pdus_objects_carry_its_total_phases_outlets_and_open_breakers():
    v = pdu_objects(300.0, [150.0, 0.0, 150.0], [24.0, 24.0, 27.5], phase_limit_kw=99.0)
    assert v[f"{PDU_ROOT}.1.2.0"] == ["gauge", 300_000]
    assert [v[f"{PDU_ROOT}.1.1.3.{p}"][1] for p in (1, 2, 3)] == [100_000] * 3
    assert [v[f"{PDU_ROOT}.1.1.5.{p}"][1] for p in (1, 2, 3)] == [2, 2, 2]  # each phase above its 99 kW
    assert [v[f"{PDU_ROOT}.3.1.2.{o}"][1] for o in (1, 2, 3)] == [1, 2, 1]
    assert v[f"{PDU_ROOT}.5.1.2.3"] == ["integer", 275]
