"""The LDAP authenticator's pure rules: which usernames may reach the directory, group
matching by DN or cn, account expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from deskhub.authenticators.ldap import in_group, is_expired, username_is_safe

REGEX = r"^[a-z][.a-z0-9_-]*$"  # ldapauthenticator's default valid_username_regex


@pytest.mark.parametrize("name", ["alice", "a.b-c_d", "x1"])
def test_plain_usernames_are_safe(name):
    assert username_is_safe(name, REGEX)


@pytest.mark.parametrize(
    "name",
    [
        "*",
        "admin)(uid=*",
        "alice)(|(uid=*",
        "al*",
        "(uid=alice)",
        "alice\\2a",
        "alice\x00",
        "alice\n",  # re.match with "$" would let this one through
        "uid=alice,ou=people",
        "",
        None,
        "Alice",
    ],
)
def test_injection_and_odd_usernames_are_refused(name):
    assert not username_is_safe(name, REGEX)


def test_metacharacters_are_refused_even_with_a_permissive_regex():
    for name in ("a*", "a(b", "a)b", "a\\b", "a\x00", "a,b", "a=b"):
        assert not username_is_safe(name, r".*")
    assert username_is_safe("o'brien", r".*")


GROUPS = [
    ("cn=deskhub-admins,ou=groups,dc=deskhub,dc=test", "deskhub-admins"),
    ("cn=exp-mx-1,ou=groups,dc=deskhub,dc=test", "exp-mx-1"),
]


def test_group_by_dn_or_cn():
    assert in_group("cn=deskhub-admins,ou=groups,dc=deskhub,dc=test", GROUPS)
    assert in_group("CN=Deskhub-Admins, OU=groups, DC=deskhub, DC=test", GROUPS)
    assert in_group("deskhub-admins", GROUPS)
    assert in_group("DESKHUB-ADMINS", GROUPS)
    assert not in_group("cn=deskhub-admins,ou=other,dc=deskhub,dc=test", GROUPS)
    assert not in_group("admins", GROUPS)
    assert not in_group("", GROUPS)


NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TODAY = (NOW.date() - datetime(1970, 1, 1).date()).days  # shadowExpire's count of days


@pytest.mark.parametrize(
    "value, expired",
    [
        ([TODAY], True),  # expires on that day (shadow(5))
        ([TODAY - 1], True),
        ([TODAY + 1], False),
        (TODAY + 1, False),
        ("100", True),
        ([0], False),  # 0 and -1: never
        ([-1], False),
        ([], False),
        (None, False),
        ("soon", False),
        (NOW - timedelta(seconds=1), True),
        (NOW + timedelta(days=1), False),
        (datetime(2026, 1, 1), True),  # naive: read as UTC
        (datetime(9999, 12, 31, tzinfo=UTC), False),  # AD: never
        (datetime(1601, 1, 1, tzinfo=UTC), False),  # AD: not set
    ],
)
def test_expiry(value, expired):
    assert is_expired(value, NOW) is expired
