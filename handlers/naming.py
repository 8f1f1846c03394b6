"""Names of the objects a workspace creates, and the names Kubeflow and Dex derive from emails.

Why this module is strict:

* Every name built here ends up in a Kubernetes object, an S3 bucket, an EKS nodegroup or a YAML
  document, and most of them are visible to other tenants or to the whole AWS partition. A name
  that one API accepts and the next refuses leaves a half-made workspace, so every rendered name is
  checked against the rules of the service that will receive it *before* a plan is built.
* The input comes from chat. Uppercase, look-alike letters (Cyrillic U+0430 for ``a``), line breaks, YAML
  metacharacters and overlong values are refused with a message that shows the offending value
  escaped and truncated, never echoed raw into Slack.
* Two names must match other programs byte for byte: KFAM's RoleBinding/AuthorizationPolicy name
  (``kfam_binding_name``) and Dex's Password object name (``dex_password_object_name``); see
  ``kubeflow-reference.md`` sections 2.2 and 3.2. They are ports of those functions, not
  approximations.

Naming templates (``NamingSettings``) are ``str.format``-style strings limited to plain
``{field}`` placeholders. They are checked when the settings are built, so a bad template stops
the bot at start-up instead of failing a request at apply time.

Every ``errors.InvalidInput`` raised here carries a ``user_message`` in the core's neutral text
(see "Text for people" below): values shown raw but truncated and with invisible characters
spelled out; the edge escapes it for Slack (``bot.render.Style.message``).
"""

from __future__ import annotations

import base64
import dataclasses
import re
import string
import unicodedata
from collections.abc import Container, Mapping
from types import MappingProxyType
from urllib.parse import quote_plus

from handlers import errors

MAX_WORKSPACE_NAME = 40
"""Longest NAME: leaves room in a 63-character label for prefixes and suffixes from templates."""

KFAM_ROLES = frozenset({"edit", "view", "admin"})
"""The short role names KFAM writes into the ``role`` annotation and the binding name."""

RESERVED_NAMESPACES = frozenset(
    {
        "default",
        "auth",
        "cert-manager",
        "istio-system",
        "kf-chatops",
        "knative-eventing",
        "knative-serving",
        "kserve",
        "kubeflow",
        "kubeflow-system",
        "oauth2-proxy",
    }
)
"""Namespaces of the platform itself; ``kube-*`` is reserved as well. ``kf-chatops`` is the
bot's own (docs/DEPLOY.md; it holds the bot's secrets); adoption also refuses the namespaces the
settings name (Dex's, Kubeflow's, the bot principal's) and any namespace the profile controller
did not make for its Profile.

The profile step would refuse most of them (they have no matching owner annotation), but the
request should fail at parse time, not after an admin approved it.
"""

_ZWSP = "\u200b"
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Characters that make text display in another order than it is stored (Trojan Source)."""
MAX_FREE_TEXT = 1000
"""Longest free text (a reject reason); the reject modal's input has the same limit."""
_SLACK_BROADCAST = re.compile(r"(?<![A-Za-z0-9._%+-])@(?=(?:channel|here|everyone))", re.IGNORECASE)
_SHOW_LIMIT = 40

_LABEL_CHARS = re.compile(r"[a-z0-9-]")
_DNS1123_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_WORKSPACE_NAME = re.compile(r"[a-z](?:[a-z0-9-]*[a-z0-9])?")
_BUCKET_CHARS = re.compile(r"[a-z0-9.-]")
_IP_LIKE = re.compile(r"[0-9]+(?:\.[0-9]+){3}")
_NODEGROUP_CHARS = re.compile(r"[A-Za-z0-9_-]")
_LABEL_NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]")
_LABEL_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?")
_INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*\.[a-z0-9]+(?:-[a-z0-9]+)*")
_SETTING_VALUE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_DEX_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
# The local part's grammar (normalize_email documents why it is this narrow).
_EMAIL_LOCAL_CHARS = re.compile(r"[a-z0-9._+-]")
_EMAIL_LOCAL = re.compile(r"[a-z0-9]+(?:[._+-][a-z0-9]+)*")
_MAILTO = re.compile(r"<mailto:([^|<>]*)(?:\|([^<>]*))?>")
# KFAM compiles "[^a-zA-Z0-9]+"; Python's \W would differ on '_' and non-ASCII letters.
_KFAM_NON_ALNUM = re.compile(r"[^a-zA-Z0-9]+")
# What Go's fnv.New64().Sum(b) appends when nothing was written: the FNV-64 offset basis.
_FNV64_OFFSET_BASIS = 0xCBF29CE484222325

_BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")

_NAME_FIELDS = frozenset({"name", "project"})
_SETTINGS_FIELDS = frozenset({"region_alias", "infra", "env"})
_TEMPLATE_FIELDS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "namespace": _NAME_FIELDS | _SETTINGS_FIELDS,
        "bucket": _NAME_FIELDS | _SETTINGS_FIELDS,
        "nodegroup": _NAME_FIELDS | _SETTINGS_FIELDS | {"spec"},
        "node_label_key": _SETTINGS_FIELDS,
        "node_label_value": _NAME_FIELDS | _SETTINGS_FIELDS | {"spec"},
        "dex_username": _SETTINGS_FIELDS | {"local", "domain"},
    }
)
# Without NAME in these, every workspace would share one namespace, bucket or nodegroup.
_TEMPLATES_NEEDING_NAME = ("namespace", "bucket", "nodegroup", "node_label_value")


# --------------------------------------------------------------------------- text for people
#
# Texts the core writes for people (``KfError.user_message``, a timer's message, a pin's reason)
# are neutral: plain text, no Slack markup, so one text serves Slack and the terminal alike.
# * Values a person typed are quoted with ``show_value``: raw, but truncated and with control,
#   bidirectional and other non-ASCII characters spelled out (``\\u202e``). That is about what a
#   person sees, so it happens here, for every edge.
# * Backticks are the one shared code marker (Slack shows them as code, the terminal as is).
# * People are ``person(user_id)`` placeholders, never ``<@U…>``: each edge renders them
#   (Slack as a mention, the terminal as a name).
# Each edge makes the whole text inert in its own medium: Slack escapes ``&``, ``<``, ``>`` and
# broadcasts (``escape_slack_text``), the terminal masks control characters.

_PERSON_MARK = "\x1e"
# User ids: Slack's (U123), the shell's (shell:alice@example.com), the bot's own (kfbot).
PERSON = re.compile(_PERSON_MARK + r"@([A-Za-z0-9][A-Za-z0-9:._@+-]{0,319})" + _PERSON_MARK)
"""A ``person`` placeholder; one group, the user id (``PERSON.split`` alternates text and ids)."""


def is_person_id(user_id: str) -> bool:
    """Whether ``user_id`` can be named with ``person``."""
    return PERSON.fullmatch(f"{_PERSON_MARK}@{user_id}{_PERSON_MARK}") is not None


def person(user_id: str) -> str:
    """A person named in a core text, as a placeholder the edge renders: ``\\x1e@U123\\x1e``.

    The mark is a control character, which no value reaches a text with: ``show_value`` spells
    control characters out and ``free_text`` refuses them, so a person cannot type a placeholder
    into a message; an edge that finds a stray mark treats it as text.
    """
    if not is_person_id(user_id):
        raise ValueError(f"not a user id: {user_id!r}")
    return f"{_PERSON_MARK}@{user_id}{_PERSON_MARK}"


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``…`` when something was cut."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def escape_slack_text(text: str) -> str:
    """``text`` made inert for Slack ``mrkdwn``/plain text: no mentions, links or broadcasts
    (the edge's escape of neutral core text and of values, ``bot.render.SLACK``).

    Slack's control sequences all start with ``<`` (``<!channel>``, ``<@U123>``,
    ``<http://x|label>``), so escaping ``&``, ``<`` and ``>`` as Slack documents disarms them.
    Bare ``@channel``/``@here``/``@everyone`` are only broadcasts when a message is posted with
    ``link_names``; a zero-width space after ``@`` keeps them readable and harmless whatever the
    caller's flags. An ``@`` inside an email (``bob@here.com``) is left alone so the address can
    still be copied.
    """
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _SLACK_BROADCAST.sub("@" + _ZWSP, escaped)


def _visible_char(char: str) -> str:
    if " " <= char <= "~" and char != "`":
        return char
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if char in named:
        return named[char]
    # A letter, digit, punctuation or symbol is echoed as typed (`tëam`, not `t\xebam`): the
    # message that refuses it names the character too. What cannot be seen or changes how text
    # around it shows (controls, format characters such as bidi overrides, spaces other than the
    # plain one, combining marks) is spelled out.
    if char != "`" and unicodedata.category(char)[0] in "LNPS" and char not in BIDI_CONTROLS:
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def show_value(value: str, limit: int = _SHOW_LIMIT) -> str:
    """``value`` quoted for a message: truncated; invisible characters and the backtick spelled out.

    Markup characters (``<``, ``&``) stay as typed: the text is neutral and the edge escapes it
    (see "text for people").
    """
    shown = "".join(_visible_char(c) for c in value[:limit])
    if len(value) > limit:
        shown += "…"
    return f"`{shown}`"


def describe_char(char: str) -> str:
    """A phrase naming one character for an error message (``U+0430 CYRILLIC SMALL LETTER A``)."""
    if char == " ":
        return "a space"
    if char in "\n\r":
        return "a line break"
    if char == "\t":
        return "a tab"
    if char == "`":
        return "a backtick"
    if char in BIDI_CONTROLS:
        return f"the bidirectional control U+{ord(char):04X}, which makes text show in another order"
    if " " < char <= "~":
        return f"'{char}'"
    name = unicodedata.name(char, "")
    if not name or unicodedata.category(char).startswith("C"):
        return f"the invisible control character U+{ord(char):04X}"
    return f"U+{ord(char):04X} {name} (only plain ASCII is allowed; some letters look alike)"


def free_text(raw: str, *, what: str, field: str, limit: int = MAX_FREE_TEXT) -> str:
    """Free text a person typed (a reject reason), checked where it enters: ``raw`` stripped.

    Refused, with a message that names the character: control characters other than line breaks
    and tabs (a NUL cannot even be stored in PostgreSQL), lone surrogates, and bidirectional
    controls (they make a card show another text than the one recorded); more than ``limit``
    characters. Any other Unicode is kept: the text is rendered as inert literal text
    (``bot.render.Style.text``), not interpreted.
    """
    text = raw.replace("\r\n", "\n").strip()
    if not text:
        raise errors.InvalidInput(f"The {what} is empty.", field=field)
    if len(text) > limit:
        raise errors.InvalidInput(
            f"The {what} is {len(text)} characters long; the limit is {limit}.", field=field
        )
    for char in text:
        if char in BIDI_CONTROLS or (
            char not in "\n\t" and unicodedata.category(char) in ("Cc", "Cs")
        ):
            raise errors.InvalidInput(
                f"The {what} contains {describe_char(char)}; remove it and try again.", field=field
            )
    return text


def _first_bad_char(value: str, allowed: re.Pattern[str]) -> str | None:
    for char in value:
        if not allowed.fullmatch(char):
            return char
    return None


# --------------------------------------------------------------------------- validators


def validate_workspace_name(name: str) -> str:
    """Check the NAME a user typed: 1..40 lowercase letters, digits and ``-``; starts with a letter.

    Returns ``name`` unchanged; raises ``errors.InvalidInput`` (field ``name``) otherwise.
    """
    what = "Workspace names"
    if not name:
        raise errors.InvalidInput("Give the workspace a name, e.g. `team-vision`.", field="name")
    shown = show_value(name)
    if len(name) > MAX_WORKSPACE_NAME:
        raise errors.InvalidInput(
            f"The workspace name {shown} is {len(name)} characters long; "
            f"{what.lower()} can have at most {MAX_WORKSPACE_NAME}.",
            field="name",
        )
    if name.isascii() and name != name.lower() and _WORKSPACE_NAME.fullmatch(name.lower()):
        raise errors.InvalidInput(
            f"{what} are lowercase: try {show_value(name.lower())} instead of {shown}.", field="name"
        )
    bad = _first_bad_char(name, _LABEL_CHARS)
    if bad is not None:
        raise errors.InvalidInput(
            f"The workspace name {shown} contains {describe_char(bad)}; "
            "use only lowercase letters a-z, digits and '-'.",
            field="name",
        )
    if not name[0].isalpha():
        raise errors.InvalidInput(f"The workspace name {shown} must start with a letter.", field="name")
    if not _WORKSPACE_NAME.fullmatch(name):
        raise errors.InvalidInput(
            f"The workspace name {shown} must end with a letter or digit.", field="name"
        )
    return name


def validate_dns1123_label(value: str, what: str, *, field: str | None = None) -> str:
    """Check a Kubernetes DNS-1123 label (namespaces): 1..63 of ``[a-z0-9-]``, alphanumeric ends.

    ``what`` names the thing in the message ("namespace"); ``field`` defaults to it.
    """
    field = field or what
    if not value:
        raise errors.InvalidInput(f"The {what} name is empty.", field=field)
    shown = show_value(value)
    if len(value) > 63:
        raise errors.InvalidInput(
            f"The {what} {shown} is {len(value)} characters long; the limit is 63.", field=field
        )
    bad = _first_bad_char(value, _LABEL_CHARS)
    if bad is not None:
        raise errors.InvalidInput(
            f"The {what} {shown} contains {describe_char(bad)}; "
            "use only lowercase letters a-z, digits and '-'.",
            field=field,
        )
    if not _DNS1123_LABEL.fullmatch(value):
        raise errors.InvalidInput(
            f"The {what} {shown} must start and end with a letter or digit.", field=field
        )
    return value


def validate_bucket_name(value: str, *, field: str = "bucket") -> str:
    """Check the S3 general purpose bucket naming rules (as of 2025).

    3..63 characters of lowercase letters, digits, ``.`` and ``-``; alphanumeric at both ends; no
    ``..``; not shaped like an IPv4 address; none of the prefixes and suffixes AWS reserves
    (``xn--``, ``sthree-``, ``amzn-s3-demo-``; ``-s3alias``, ``--ol-s3``, ``.mrap``, ``--x-s3``,
    ``--table-s3``).
    """
    shown = show_value(value)
    if not 3 <= len(value) <= 63:
        raise errors.InvalidInput(
            f"The bucket name {shown} is {len(value)} characters long; S3 allows 3 to 63.", field=field
        )
    bad = _first_bad_char(value, _BUCKET_CHARS)
    if bad is not None:
        raise errors.InvalidInput(
            f"The bucket name {shown} contains {describe_char(bad)}; "
            "S3 allows only lowercase letters, digits, '.' and '-'.",
            field=field,
        )
    if not (value[0].isalnum() and value[-1].isalnum()):
        raise errors.InvalidInput(
            f"The bucket name {shown} must start and end with a letter or digit.", field=field
        )
    if ".." in value:
        raise errors.InvalidInput(f"The bucket name {shown} must not contain '..'.", field=field)
    if _IP_LIKE.fullmatch(value):
        raise errors.InvalidInput(
            f"The bucket name {shown} looks like an IP address, which S3 refuses.", field=field
        )
    for prefix in _BUCKET_RESERVED_PREFIXES:
        if value.startswith(prefix):
            raise errors.InvalidInput(
                f"The bucket name {shown} starts with '{prefix}', which S3 reserves.", field=field
            )
    for suffix in _BUCKET_RESERVED_SUFFIXES:
        if value.endswith(suffix):
            raise errors.InvalidInput(
                f"The bucket name {shown} ends with '{suffix}', which S3 reserves.", field=field
            )
    return value


def validate_nodegroup_name(value: str, *, field: str = "nodegroup") -> str:
    """Check an EKS nodegroup name: 1..63 of ``[A-Za-z0-9_-]``, starting with a letter or digit."""
    if not value:
        raise errors.InvalidInput("The nodegroup name is empty.", field=field)
    shown = show_value(value)
    if len(value) > 63:
        raise errors.InvalidInput(
            f"The nodegroup name {shown} is {len(value)} characters long; EKS allows at most 63.",
            field=field,
        )
    bad = _first_bad_char(value, _NODEGROUP_CHARS)
    if bad is not None:
        raise errors.InvalidInput(
            f"The nodegroup name {shown} contains {describe_char(bad)}; "
            "EKS allows only letters, digits, '-' and '_'.",
            field=field,
        )
    if not value[0].isalnum():
        raise errors.InvalidInput(
            f"The nodegroup name {shown} must start with a letter or digit.", field=field
        )
    return value


def _validate_dns1123_subdomain(value: str, what: str, field: str) -> None:
    shown = show_value(value)
    if not value or len(value) > 253:
        raise errors.InvalidInput(f"The {what} {shown} must be 1 to 253 characters long.", field=field)
    for part in value.split("."):
        if not _DNS1123_LABEL.fullmatch(part):
            raise errors.InvalidInput(
                f"The {what} {shown} must be a DNS name: dot-separated parts of lowercase letters, "
                "digits and '-', each starting and ending with a letter or digit.",
                field=field,
            )


def _validate_label_name(value: str, what: str, field: str, *, allow_empty: bool) -> None:
    if not value and allow_empty:
        return
    shown = show_value(value)
    if not value:
        raise errors.InvalidInput(f"The {what} is empty.", field=field)
    if len(value) > 63:
        raise errors.InvalidInput(
            f"The {what} {shown} is {len(value)} characters long; the limit is 63.", field=field
        )
    bad = _first_bad_char(value, _LABEL_NAME_CHARS)
    if bad is not None:
        raise errors.InvalidInput(
            f"The {what} {shown} contains {describe_char(bad)}; use only letters, digits, '-', '_' and '.'.",
            field=field,
        )
    if not _LABEL_NAME.fullmatch(value):
        raise errors.InvalidInput(
            f"The {what} {shown} must start and end with a letter or digit.", field=field
        )


def validate_label(key: str, value: str, *, field: str = "node_label") -> tuple[str, str]:
    """Check a Kubernetes label: key ``[prefix/]name``, value ≤ 63 characters (may be empty).

    The optional prefix is a DNS-1123 subdomain (≤ 253); the name and the value are ≤ 63 of
    ``[A-Za-z0-9_.-]`` with alphanumeric ends. Returns ``(key, value)``.
    """
    prefix, slash, name = key.rpartition("/")
    if slash:
        if "/" in prefix:
            raise errors.InvalidInput(
                f"The label key {show_value(key)} may contain at most one '/'.", field=field
            )
        _validate_dns1123_subdomain(prefix, "label key prefix", field)
    _validate_label_name(name, "label key", field, allow_empty=False)
    _validate_label_name(value, "label value", field, allow_empty=True)
    return key, value


WORKSPACE_TAINT_KEY = "kf-chatops/dedicated"
"""Key of the taint that dedicates a bot-made GPU nodegroup to one workspace.

Not the node label key (``kf-chatops/workspace``, whose value names the nodegroup) and not a
setting: every tainted nodegroup and the Helm chart's admission policy name it, so it must not
change under them."""


def workspace_taint(namespace: str) -> tuple[str, str]:
    """``(key, value)`` of the taint that keeps other workspaces' pods off ``namespace``'s GPU
    nodegroups. The value is the namespace, the one name an admission policy can compare a pod's
    tolerations with; it must pass as a taint value (a label value: at most 63 of
    ``[A-Za-z0-9_.-]`` with alphanumeric ends), which EKS and Kubernetes both check."""
    if not namespace:
        raise errors.InvalidInput("A workspace taint needs the workspace's namespace.", field="name")
    return validate_label(WORKSPACE_TAINT_KEY, namespace, field="name")


def validate_instance_type(instance_type: str, *, field: str = "instance_type") -> str:
    """Check an EC2 instance type's shape (``g4dn.xlarge``, ``m7i-flex.large``), not its existence."""
    if not instance_type:
        raise errors.InvalidInput("Give an instance type, e.g. `g4dn.xlarge`.", field=field)
    shown = show_value(instance_type)
    if len(instance_type) > 40 or not _INSTANCE_TYPE.fullmatch(instance_type):
        raise errors.InvalidInput(
            f"{shown} is not an EC2 instance type; write it like `g4dn.xlarge` (lowercase, family '.' size).",
            field=field,
        )
    return instance_type


def validate_dex_username(value: str, *, field: str = "dex_username") -> str:
    """Check a Dex username: 1..64 of ``[A-Za-z0-9._+-]`` starting with a letter or digit."""
    if not _DEX_USERNAME.fullmatch(value):
        raise errors.InvalidInput(
            f"The Dex username {show_value(value)} must be 1 to 64 letters, digits, '.', '_', '+' "
            "or '-', starting with a letter or digit.",
            field=field,
        )
    return value


# --------------------------------------------------------------------------- emails


def normalize_email(raw: str) -> str:
    """The lowercased address in ``raw``; accepts Slack's ``<mailto:a@b.c|a@b.c>`` markup.

    The one check every email passes, wherever it comes from (slash-command arguments, ``--owner``,
    the workspace form, ``KFBOT_USER_ID_MAP`` keys and values, Slack profiles, ``kfbot shell --as``).
    The accepted grammar is a deliberately narrow ASCII subset of RFC 5321's dot-atom::

        email  = local "@" domain                      ; at most 254 characters, lowercased
        local  = alnum+ *( sep alnum+ )                ; 1..64 characters
        sep    = "." / "_" / "+" / "-"                 ; one at a time, between letters or digits
        alnum  = "a"-"z" / "0"-"9"
        domain = label 1*( "." label )                 ; at most 253 characters
        label  = alnum [ *( alnum / "-" ) alnum ]      ; 1..63 characters (LDH), last not all digits

    Why so narrow: the address becomes an Istio AuthorizationPolicy value (a ``*`` at either end is
    a wildcard there), a Kubeflow/Dex identity compared byte for byte, a Kubernetes name through
    KFAM's folding, Slack ``mrkdwn`` (``*``, ``_`` and ``~`` next to a non-letter start markup;
    ``&``, ``<`` and ``>`` are Slack's control characters) and a cell of an audit export opened in
    a spreadsheet (a leading ``=``, ``+``, ``-`` or ``@`` is a formula). So: no ``*``, ``?``,
    braces, quotes, ``%`` (``%2540`` decodes to another address somewhere down the line, and
    ``user%host`` is old source routing), no leading, trailing or doubled separators (``.a``,
    ``a.``, ``a..b`` are not dot-atoms; ``_it_`` would be italics), nothing outside ASCII. Real
    addresses (``first.last+tag@sub.example.com``, ``j_doe@x.io``) pass.

    Kubeflow compares the ``kubeflow-userid`` header with ``Profile.spec.owner.name`` and the
    AuthorizationPolicy values byte for byte, while Dex keeps the case it was given: one lowercase
    form everywhere keeps them equal. Non-ASCII is refused rather than normalised: the header carries
    whatever the identity provider emits, the bot does not guess that encoding, and a look-alike
    address is exactly what an attacker would send.
    """
    text = raw.strip(" \t")
    mailto = _MAILTO.fullmatch(text)
    if mailto is not None:
        target, label = mailto.group(1), mailto.group(2)
        # A link whose label differs from its target shows one address and means another.
        if label is not None and label.lower() != target.lower():
            raise errors.InvalidInput(
                f"The email link shows {show_value(label)} but points to {show_value(target)}; "
                "type the address itself.",
                field="email",
            )
        text = target
    if not text:
        raise errors.InvalidInput("Give an email address, e.g. `alice@example.com`.", field="email")
    shown = show_value(text)
    if len(text) > 254:
        raise errors.InvalidInput(
            f"The email address {shown} is {len(text)} characters long; the limit is 254.", field="email"
        )
    for char in text:
        if not char.isascii():
            raise errors.InvalidInput(
                f"The email address {shown} contains {describe_char(char)}. Only plain ASCII addresses "
                "are accepted: Kubeflow compares them byte for byte, and kf-chatops does not guess how "
                "the identity provider encodes other letters.",
                field="email",
            )
        if not " " < char <= "~":
            raise errors.InvalidInput(
                f"The email address {shown} contains {describe_char(char)}.", field="email"
            )
    email = text.lower()
    if email.count("@") != 1:
        raise errors.InvalidInput(
            f"{shown} is not an email address: it must contain exactly one '@'.", field="email"
        )
    local, domain = email.split("@")
    if not local or len(local) > 64:
        raise errors.InvalidInput(
            f"The part before '@' in {shown} must be 1 to 64 characters long.", field="email"
        )
    bad = _first_bad_char(local, _EMAIL_LOCAL_CHARS)
    if bad is not None:
        raise errors.InvalidInput(
            f"The email address {shown} contains {describe_char(bad)} before the '@'; "
            "kf-chatops accepts only letters, digits, '.', '_', '+' and '-' there.",
            field="email",
        )
    if not _EMAIL_LOCAL.fullmatch(local):
        raise errors.InvalidInput(
            f"The email address {shown} is not accepted: the part before '@' must start and end with a "
            "letter or digit, with each '.', '_', '+' or '-' between letters or digits (no '..', no "
            "leading or trailing one).",
            field="email",
        )
    labels = domain.split(".")
    if (
        len(domain) > 253
        or len(labels) < 2
        or not all(_DNS1123_LABEL.fullmatch(label) and len(label) <= 63 for label in labels)
        or labels[-1].isdigit()
    ):
        raise errors.InvalidInput(
            f"The domain of {shown} is not a valid domain name such as `example.com`.", field="email"
        )
    return email


# --------------------------------------------------------------------------- KFAM and Dex names


def kfam_binding_name(user: str, role: str) -> str:
    """KFAM's ``getBindingName`` for a User bound to a ClusterRole by its short name.

    The RoleBinding and AuthorizationPolicy must have exactly this name or the dashboard and
    KFAM's delete cannot find them. The name is lossy (``a.b@x.com`` and ``a-b@x.com`` give the
    same one), which is KFAM's behaviour and has to be kept.
    """
    if role not in KFAM_ROLES:
        raise errors.InvalidInput(
            f"The role {show_value(role)} is not one of {', '.join(sorted(KFAM_ROLES))}.", field="role"
        )
    if not user:
        raise errors.InvalidInput("The contributor's email is empty.", field="user")
    # QueryEscape is a no-op here (only [a-zA-Z0-9-] is left) but is kept to mirror KFAM.
    escaped = quote_plus(_KFAM_NON_ALNUM.sub("-", user))
    raw = "-".join(("User", escaped, "ClusterRole", role)).lower()
    name = _KFAM_NON_ALNUM.sub("-", raw)
    if len(name) > 253:
        raise errors.InvalidInput(
            f"The email {show_value(user)} is too long for a Kubernetes object name.", field="user"
        )
    return name


def dex_password_object_name(email: str) -> str:
    """Dex's ``idToName(lowercase email)``: the name of its ``passwords.dex.coreos.com`` object.

    base32 (lowercase, no padding) of the email bytes followed by what ``fnv.New64().Sum`` appends
    for empty input: the 8 big-endian bytes of the FNV-64 offset basis.
    """
    normalized = normalize_email(email)
    data = normalized.encode("ascii") + _FNV64_OFFSET_BASIS.to_bytes(8, "big")
    name = base64.b32encode(data).decode("ascii").lower().rstrip("=")
    if len(name) > 253:
        raise errors.InvalidInput(
            f"The email {show_value(normalized)} is too long for Dex's Kubernetes storage.", field="email"
        )
    return name


# --------------------------------------------------------------------------- templates


@dataclasses.dataclass(frozen=True)
class NamingSettings:
    """How workspace objects are named. Building one checks every template (``ValueError``).

    The defaults need no settings and are valid for every valid NAME (at most 40 characters):
    namespace ``team-a``, bucket ``kf-team-a``, nodegroup ``team-a-g4dn-xlarge``, node label
    ``kf-chatops/workspace: team-a-g4dn-xlarge``, Dex username ``alice`` for ``alice@x.com``.
    S3 bucket names are global across all AWS accounts: in production put something of your own
    into ``bucket`` (e.g. ``s3-{region_alias}-{infra}-{env}-{project}``).
    """

    namespace: str = "{name}"
    """Kubeflow Profile and namespace name; must render to a DNS-1123 label."""

    bucket: str = "kf-{name}"
    """S3 bucket name; must render to a valid bucket name (global namespace, see the class doc)."""

    nodegroup: str = "{name}-{spec}"
    """EKS managed nodegroup name; may use ``{spec}``, the instance type's short name."""

    node_label_key: str = "kf-chatops/workspace"
    """Key of the node label put on the nodegroup, to tell whose node it is (reports, kubectl).

    Scheduling does not use it: a PodDefault has no nodeSelector, so workspaces are kept apart by
    the taint ``WORKSPACE_TAINT_KEY`` instead.

    May use only the settings placeholders; EKS limits the whole key to 63 characters.
    """

    node_label_value: str = "{name}-{spec}"
    """Value of that node label; may use ``{spec}``."""

    dex_username: str = "{local}"
    """Dex ``username`` of a new user; ``{local}``/``{domain}`` are the parts of the owner's email."""

    region_alias: str = ""
    """Short region name for ``{region_alias}`` (``use1``); lowercase letters, digits and '-'."""

    infra: str = ""
    """Infrastructure name for ``{infra}``; lowercase letters, digits and '-'."""

    env: str = ""
    """Environment name for ``{env}`` (``dev``, ``prod``); lowercase letters, digits and '-'."""

    instance_specs: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)
    """Instance type → short name for ``{spec}`` (``{"g4dn.xlarge": "g4dnxl"}``).

    Types not listed use the type with '.' turned into '-' (``g4dn-xlarge``).
    """

    def __post_init__(self) -> None:
        # A read-only copy: the caller's dict must not change names after the check below.
        object.__setattr__(self, "instance_specs", MappingProxyType(dict(self.instance_specs)))
        check_templates(self)


@dataclasses.dataclass(frozen=True)
class WorkspaceNames:
    """Every name a workspace's plan uses, all checked against their service's rules."""

    namespace: str
    bucket: str
    nodegroup: str | None
    """None when the workspace has no nodegroup (no instance type)."""
    node_label: tuple[str, str] | None
    """``(key, value)`` of the nodegroup's node label, or None."""


def _template_fields(which: str, template: str) -> list[str]:
    """The placeholders of ``template``; ``ValueError`` for anything but plain ``{field}``."""
    allowed = _TEMPLATE_FIELDS[which]
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"naming template {which}={template!r}: {exc}") from exc
    fields: list[str] = []
    for _literal, field_name, format_spec, conversion in parsed:
        if field_name is None:
            continue
        # Attribute or index access ({name.__class__}, {name[0]}) would let a template reach
        # into Python objects; conversions and format specs have no use in a name.
        if field_name not in allowed or format_spec or conversion is not None:
            shown = (
                field_name
                + (f"!{conversion}" if conversion else "")
                + (f":{format_spec}" if format_spec else "")
            )
            raise ValueError(
                f"naming template {which}={template!r}: placeholder {{{shown}}} is not allowed; "
                f"use plain {{field}} with one of: {', '.join(sorted(allowed))}"
            )
        fields.append(field_name)
    return fields


def _render(which: str, template: str, values: Mapping[str, str]) -> str:
    # Concatenating parsed pieces instead of str.format keeps attribute lookup impossible even if
    # a template reached here without check_templates.
    _template_fields(which, template)
    parts: list[str] = []
    for literal, field_name, _spec, _conv in string.Formatter().parse(template):
        parts.append(literal)
        if field_name is not None:
            parts.append(values[field_name])
    return "".join(parts)


def _check_fits(which: str, template: str, rendered: str, *, name: str, limit: int, what: str) -> None:
    if len(rendered) <= limit:
        return
    uses = sum(1 for f in _template_fields(which, template) if f in _NAME_FIELDS)
    hint = "Choose a shorter workspace name."
    if uses:
        fixed = len(rendered) - uses * len(name)
        longest = (limit - fixed) // uses
        if longest >= 1:
            hint = f"Choose a workspace name of at most {longest} characters."
    raise errors.InvalidInput(
        f"With this name the {what} would be {show_value(rendered, 70)}, {len(rendered)} characters "
        f"long; the limit is {limit}. {hint}",
        field="name",
    )


def instance_spec(settings: NamingSettings, instance_type: str) -> str:
    """The short name ``{spec}`` stands for: from ``instance_specs``, else '.' → '-'."""
    return settings.instance_specs.get(instance_type, instance_type.replace(".", "-"))


def render_names(settings: NamingSettings, name: str, instance_type: str | None) -> WorkspaceNames:
    """Render and check every name of workspace ``name``; ``errors.InvalidInput`` if any is invalid.

    ``nodegroup`` and ``node_label`` are rendered only when ``instance_type`` is given.
    """
    validate_workspace_name(name)
    values: dict[str, str] = {
        "name": name,
        "project": name,
        "region_alias": settings.region_alias,
        "infra": settings.infra,
        "env": settings.env,
    }

    namespace = _render("namespace", settings.namespace, values)
    _check_fits("namespace", settings.namespace, namespace, name=name, limit=63, what="namespace")
    validate_dns1123_label(namespace, "namespace", field="name")
    if namespace in RESERVED_NAMESPACES or namespace.startswith("kube-"):
        raise errors.InvalidInput(
            f"The namespace {show_value(namespace)} belongs to the platform; choose another name.",
            field="name",
        )

    bucket = _render("bucket", settings.bucket, values)
    _check_fits("bucket", settings.bucket, bucket, name=name, limit=63, what="bucket name")
    validate_bucket_name(bucket, field="name")

    if instance_type is None:
        return WorkspaceNames(namespace=namespace, bucket=bucket, nodegroup=None, node_label=None)

    validate_instance_type(instance_type)
    values["spec"] = instance_spec(settings, instance_type)
    nodegroup = _render("nodegroup", settings.nodegroup, values)
    _check_fits("nodegroup", settings.nodegroup, nodegroup, name=name, limit=63, what="nodegroup name")
    validate_nodegroup_name(nodegroup, field="name")

    label_key = _render("node_label_key", settings.node_label_key, values)
    label_value = _render("node_label_value", settings.node_label_value, values)
    _check_fits(
        "node_label_value",
        settings.node_label_value,
        label_value,
        name=name,
        limit=63,
        what="node label value",
    )
    validate_label(label_key, label_value, field="name")
    # EKS nodegroup labels: the whole key ≤ 63 and a non-empty value (stricter than Kubernetes).
    if len(label_key) > 63 or not label_value:
        raise errors.InvalidInput(
            f"The node label {show_value(label_key)}: {show_value(label_value)} is not accepted by EKS "
            "(key at most 63 characters, value not empty).",
            field="name",
        )
    return WorkspaceNames(
        namespace=namespace, bucket=bucket, nodegroup=nodegroup, node_label=(label_key, label_value)
    )


def dex_username(settings: NamingSettings, email: str) -> str:
    """The Dex ``username`` for a new user with this email, from the ``dex_username`` template."""
    local, _, domain = normalize_email(email).partition("@")
    values = {
        "local": local,
        "domain": domain,
        "region_alias": settings.region_alias,
        "infra": settings.infra,
        "env": settings.env,
    }
    return validate_dex_username(_render("dex_username", settings.dex_username, values))


def check_templates(settings: NamingSettings) -> None:
    """Raise ``ValueError`` naming the problem if the settings cannot produce valid names.

    Checks the placeholder syntax of every template, that per-workspace templates contain NAME
    (``{name}`` or ``{project}``), the settings values, and renders everything for a sample
    NAME (``team1``) so that a template that can never be valid (uppercase literal, ``_`` in a
    namespace, a reserved bucket prefix) is found at start-up. NAMEs that make a name too long
    are still refused per request by ``render_names``.
    """
    templates = {
        "namespace": settings.namespace,
        "bucket": settings.bucket,
        "nodegroup": settings.nodegroup,
        "node_label_key": settings.node_label_key,
        "node_label_value": settings.node_label_value,
        "dex_username": settings.dex_username,
    }
    for which, template in templates.items():
        fields = _template_fields(which, template)
        if which in _TEMPLATES_NEEDING_NAME and not _NAME_FIELDS.intersection(fields):
            raise ValueError(
                f"naming template {which}={template!r} must contain {{name}} or {{project}}, "
                "or every workspace would get the same one"
            )
    for setting in ("region_alias", "infra", "env"):
        value: str = getattr(settings, setting)
        if value and not (len(value) <= 30 and _SETTING_VALUE.fullmatch(value)):
            raise ValueError(
                f"naming setting {setting}={value!r}: use at most 30 lowercase letters, digits and '-'"
            )
    for instance_type, spec in settings.instance_specs.items():
        if not _INSTANCE_TYPE.fullmatch(instance_type):
            raise ValueError(f"naming setting instance_specs: {instance_type!r} is not an instance type")
        if not (len(spec) <= 30 and _SETTING_VALUE.fullmatch(spec)):
            raise ValueError(
                f"naming setting instance_specs[{instance_type!r}]={spec!r}: "
                "use at most 30 lowercase letters, digits and '-'"
            )
    # A typical short NAME: problems it shows are in the template, not in some unusual NAME.
    sample = "team1"
    try:
        render_names(settings, sample, None)
        for instance_type in ["m5.large", *settings.instance_specs]:
            render_names(settings, sample, instance_type)
        dex_username(settings, "user@example.com")
    except errors.InvalidInput as exc:
        raise ValueError(
            f"naming templates cannot produce valid names (tried workspace {sample!r}): {exc.user_message}"
        ) from exc


def names_other_namespace(
    namespace: str, values: Mapping[str, str], profiles: Container[str], what: str
) -> str | None:
    """Why tags or labels tie an object to a namespace other than ``namespace``: a key that names a
    namespace (``Namespace``, ``kubeflow/namespace``) with another value, or a value that is another
    Profile's name (``profiles``). Adoption skips such an object, and ``workspace delete`` keeps an
    adopted one that gained such a tag since: it was handed to that workspace's team."""
    for key, value in sorted(values.items()):
        if value == namespace or not value:
            continue
        if "namespace" in key.lower() or value in profiles:
            return f"its {what} {show_value(key)} names {show_value(value)}"
    return None
