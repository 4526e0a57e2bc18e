"""NHS number Modulus 11 check (gateway.mapping.nhs_number)."""

import random

import pytest

from gateway.mapping.nhs_number import is_valid_nhs_number, nhs_check_digit, normalize_nhs_number


def make_nhs_number(prefix: str, rng: random.Random) -> str:
    """A valid number in a synthetic range, built with the published algorithm."""
    while True:
        nine = prefix + "".join(rng.choice("0123456789") for _ in range(9 - len(prefix)))
        check = nhs_check_digit(nine)
        if check is not None:
            return nine + str(check)


@pytest.mark.parametrize("number", ["9434765919", "9990308241", "9995260182", "9439378654", "9991860916"])
def test_known_test_range_numbers_are_valid(number):
    assert is_valid_nhs_number(number)


@pytest.mark.parametrize("number", ["943 476 5919", "943-476-5919", " 9434765919 "])
def test_display_formats_are_accepted(number):
    assert is_valid_nhs_number(number)
    assert normalize_nhs_number(number) == "9434765919"


@pytest.mark.parametrize("prefix", ["999", "943"])
def test_generated_numbers_pass_and_every_other_check_digit_fails(prefix):
    rng = random.Random(20240501)
    for _ in range(50):
        number = make_nhs_number(prefix, rng)
        assert is_valid_nhs_number(number), number
        for wrong in set("0123456789") - {number[9]}:
            assert not is_valid_nhs_number(number[:9] + wrong), number[:9] + wrong


@pytest.mark.parametrize("number", [
    "9434765918",      # wrong check digit
    "943476591",       # nine digits
    "94347659190",     # eleven digits
    "94347659A9",      # a letter
    "",
    "９４３４７６５９１９",  # full-width digits are not ASCII digits
])
def test_invalid_numbers(number):
    assert not is_valid_nhs_number(number)


def test_remainder_giving_ten_has_no_check_digit():
    # 100000001: 1*10 + 1*2 = 12; 12 % 11 = 1; 11 - 1 = 10 -> no valid check digit exists.
    assert nhs_check_digit("100000001") is None
    assert not any(is_valid_nhs_number("100000001" + d) for d in "0123456789")


def test_remainder_zero_gives_check_digit_zero():
    # 000000000 sums to 0 -> 11 - 0 = 11 -> check digit 0.
    assert nhs_check_digit("000000000") == 0
    assert nhs_check_digit("943476591") == 9


def test_non_string_is_not_valid():
    assert not is_valid_nhs_number(9434765919)  # type: ignore[arg-type]
