"""Hostile values shared by the suites that attack the same boundary from different sides."""

from __future__ import annotations

REVIEWED_EMAIL_ATTACKS = (
    "*@example.com",
    "a*@example.com",
    "*bold*@example.com",
    "x{y}@example.com",
    "a&b@example.com",
    "=cmd@example.com",
    "%2540@example.com",
    "_it_@example.com",
    "~s~@example.com",
)
"""What the outside review found accepted as an email (issue 9, finding 2)."""

MORE_EMAIL_ATTACKS = (
    "a?@example.com",
    "+cmd@example.com",
    "-cmd@example.com",
    "a_@example.com",
    "a._b@example.com",
    "a+_b_+c@example.com",
    "a/b@example.com",
    "a!b@example.com",
    "a#b@example.com",
    "a^b@example.com",
    "a$b@example.com",
    "a=b@example.com",
    "user%host@example.com",
    "a@*.example.com",
    "a@exa*mple.com",
)
"""Their neighbours: the same tricks in other characters and places."""
