"""Passwords and tokens out of everything myason prints: --check-config, error messages, logs.

A collector.yaml may hold PostgreSQL DSNs with passwords (`postgresql://u:pw@h/db` or
`password=pw` in key=value form) and InfluxDB passwords and tokens; error messages of drivers
may quote a DSN or a URL. Output goes through redact_config() (configuration mappings) or
redact_text() (any message), which replace the secret part with MASK and keep the rest, so a
printed configuration still tells which server and user are meant.
"""
import re

MASK = "***"

# Mapping keys whose value is a secret as a whole (InfluxDB `password`, `token`; the API's token).
SECRET_KEYS = frozenset(("password", "passwd", "token", "secret", "api_key", "apikey", "sslpassword"))

# scheme://user:password@host: the password runs to the last '@' before the host part. Only
# the // is required: a mistyped DSN (`postgresql//u:pw@h`) is quoted by libpq's error.
_URL_USERINFO = re.compile(r"(?P<head>//[^:/?#@\s'\"]*:)(?P<secret>[^\s/'\"]*)@")
# libpq key=value form (`password = 'a b'`, `password=pw`) and URL query parameters
# (`?password=pw`, InfluxDB's `&p=pw`, `token=`): quoted values may hold spaces and \' escapes.
_KEY_VALUE = re.compile(
    r"(?P<head>(?:\b(?:password|passwd|sslpassword|token|secret|api_key|apikey)|(?<=[?&;])p)\s*=\s*)"
    r"(?P<secret>'(?:[^'\\]|\\.)*'|[^\s&'\",;]+)", re.IGNORECASE)
# 'password': 'pw' or "token": "t" in a printed mapping (repr or JSON).
_QUOTED_ITEM = re.compile(
    r"(?P<head>(?P<q>['\"])(?:password|passwd|sslpassword|token|secret|api_key|apikey)(?P=q)\s*:\s*)"
    r"(?P<secret>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")", re.IGNORECASE)
# An HTTP Authorization header quoted in a message.
_AUTH_HEADER = re.compile(r"(?P<head>\bAuthorization['\"]?\s*[:=]\s*['\"]?(?:Basic|Bearer|Token)\s+)"
                          r"(?P<secret>[^\s'\"]+)", re.IGNORECASE)
_PATTERNS = (_URL_USERINFO, _QUOTED_ITEM, _KEY_VALUE, _AUTH_HEADER)
# Cheap test before the regular expressions: most log lines hold none of these.
_HINT = re.compile(r"//|pass|token|secret|api_?key|[?&;]p\s*=|authorization", re.IGNORECASE)


def _mask(m):
    secret = m.group("secret")
    if secret[:1] in "'\"" and len(secret) > 1:
        return m.group("head") + secret[0] + MASK + secret[0]
    return m.group("head") + MASK + ("@" if m.re is _URL_USERINFO else "")


def redact_text(text):
    """text with every password, token or credential in it replaced by MASK."""
    if not isinstance(text, str) or not _HINT.search(text):
        return text
    for pattern in _PATTERNS:
        text = pattern.sub(_mask, text)
    return text


def redact_config(value, key=None):
    """A copy of a configuration (mappings, lists, strings) with the secrets masked.

    Values of SECRET_KEYS are masked whole; any other string is passed through redact_text, so
    DSNs and URLs keep their host, port, user and database.
    """
    if isinstance(value, dict):
        return {k: redact_config(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_config(v) for v in value)
    if isinstance(key, str) and key.lower() in SECRET_KEYS and value not in (None, ""):
        return MASK
    return redact_text(value)
