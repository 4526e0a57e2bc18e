"""HL7 timestamps -> FHIR date/dateTime/instant: precision and offsets kept exactly."""

import pytest

from gateway.mapping.timestamps import (
    PrecisionError,
    hl7_to_fhir_date,
    hl7_to_fhir_datetime,
    hl7_to_fhir_instant,
    hl7_to_utc_instant,
)

LONDON = "Europe/London"


@pytest.mark.parametrize("value, expected", [
    ("20240501103000+0100", "2024-05-01T10:30:00+01:00"),
    ("20240501103000-0500", "2024-05-01T10:30:00-05:00"),
    ("20240501103000+0000", "2024-05-01T10:30:00+00:00"),
    ("20240501103000+00", "2024-05-01T10:30:00+00:00"),
    ("20240501103000+0530", "2024-05-01T10:30:00+05:30"),
    ("202405011030+0100", "2024-05-01T10:30:00+01:00"),          # minutes only: seconds added
    ("2024050110+0100", "2024-05-01T10:00:00+01:00"),            # hour only
    ("20240501103000.1+0100", "2024-05-01T10:30:00.1+01:00"),    # fractions kept digit for digit
    ("20240501103000.1234+0100", "2024-05-01T10:30:00.1234+01:00"),
    ("20240501103000.123456", "2024-05-01T10:30:00.123456+01:00"),
    ("20240501", "2024-05-01"),                                   # date precision kept
    ("20240501+0100", "2024-05-01"),                              # a date carries no zone in FHIR
    ("202405", "2024-05"),
    ("2024", "2024"),
])
def test_datetime_keeps_precision_and_offset(value, expected):
    assert hl7_to_fhir_datetime(value, LONDON) == expected


@pytest.mark.parametrize("value, expected", [
    ("20240115103000", "2024-01-15T10:30:00+00:00"),   # GMT in winter
    ("20240701103000", "2024-07-01T10:30:00+01:00"),   # BST in summer
    ("20240331003000", "2024-03-31T00:30:00+00:00"),   # just before the clocks go forward
    ("20240331023000", "2024-03-31T02:30:00+01:00"),   # just after
    ("20241027013000", "2024-10-27T01:30:00+01:00"),   # the repeated hour: the first (BST) one
    ("20241027023000", "2024-10-27T02:30:00+00:00"),
])
def test_local_times_get_the_zone_offset_dst_aware(value, expected):
    assert hl7_to_fhir_datetime(value, LONDON) == expected


def test_other_zones_are_honoured():
    assert hl7_to_fhir_datetime("20240701103000", "America/New_York") == "2024-07-01T10:30:00-04:00"
    assert hl7_to_fhir_datetime("20240701103000", "UTC") == "2024-07-01T10:30:00+00:00"


@pytest.mark.parametrize("value", [
    "20241345",            # month 13
    "20240230",            # 30 February
    "20230229",            # not a leap year
    "20240501246000",      # hour 24
    "20240501106000",      # minute 60
    "20240501103060",      # second 60
    "2024050",             # odd length
    "2024-05-01",          # ISO, not HL7
    "20240501103000+1",    # offset needs two or four digits
    "20240501103000+2500", # impossible offset
    "20240501103000Z",
    "yesterday",
])
def test_bad_values_raise_value_error(value):
    with pytest.raises(ValueError):
        hl7_to_fhir_datetime(value, LONDON)


def test_leap_day_is_fine():
    assert hl7_to_fhir_datetime("20240229", LONDON) == "2024-02-29"


def test_empty_is_none():
    assert hl7_to_fhir_datetime("", LONDON) is None
    assert hl7_to_fhir_instant("", LONDON) is None
    assert hl7_to_fhir_date("", LONDON) is None


def test_instant_needs_a_time():
    assert hl7_to_fhir_instant("202405011030", LONDON) == "2024-05-01T10:30:00+01:00"
    with pytest.raises(PrecisionError):
        hl7_to_fhir_instant("20240501", LONDON)
    with pytest.raises(PrecisionError):
        hl7_to_fhir_instant("202405", LONDON)
    assert issubclass(PrecisionError, ValueError)


@pytest.mark.parametrize("value, expected", [
    ("20150312", "2015-03-12"),
    ("201503", "2015-03"),
    ("20150312083000+0000", "2015-03-12"),
])
def test_date_drops_the_time(value, expected):
    assert hl7_to_fhir_date(value, LONDON) == expected


def test_date_rejects_bad_dates():
    with pytest.raises(ValueError):
        hl7_to_fhir_date("20151345", LONDON)


@pytest.mark.parametrize("value, expected", [
    ("20240501093000+0100", "2024-05-01T08:30:00.000000Z"),
    ("20240501093000", "2024-05-01T08:30:00.000000Z"),        # local BST -> UTC
    ("20240115093000", "2024-01-15T09:30:00.000000Z"),        # local GMT
    ("20240501003000+0200", "2024-04-30T22:30:00.000000Z"),   # crosses midnight
    ("20240501093000.25-0500", "2024-05-01T14:30:00.250000Z"),
])
def test_utc_instant_for_guard_times(value, expected):
    assert hl7_to_utc_instant(value, LONDON) == expected


def test_utc_instants_sort_as_strings():
    earlier = hl7_to_utc_instant("20240501093000.5+0100", LONDON)
    later = hl7_to_utc_instant("20240501093001+0100", LONDON)
    assert earlier < later
