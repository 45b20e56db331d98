"""SharedKey authentication, checked exactly as the ``azure-batch`` SDK signs.

The SDK (15.1.0) signs in ``BatchSharedKeyAuthPolicy.on_request`` (``azure/batch/_patch.py``);
``string_to_sign`` below follows it line by line, so that any request the SDK signs with the
account's key is accepted and any change to what it signed is refused. Where the SDK's choice is
peculiar, the peculiarity is kept on purpose (see the comments): the emulator must agree with the
client that talks to it, not with a tidier reading of the documentation.

The service answers a request it cannot authenticate with 403 ``AuthenticationFailed`` and the
reason in a ``values`` item keyed ``AuthenticationErrorDetail`` (the shape the Batch service sent
for a SharedKey request on an account that does not allow SharedKey, quoted in
Azure/BatchExplorer#239); ``errors.authentication_failed`` builds that answer from an
``AuthProblem``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

SIGNED_HEADERS = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)
"""The standard headers the SDK signs, in its order (its ``headers_to_sign``)."""

SCHEME = "SharedKey"


@dataclass(frozen=True)
class AuthProblem:
    """Why a request was not authenticated: the text of ``AuthenticationErrorDetail``."""

    detail: str
    code: str = "AuthenticationFailed"
    status: int = 403


def string_to_sign(
    method: str,
    path: str,
    query: Mapping[str, Sequence[str]],
    headers: Mapping[str, str],
    account: str,
) -> str:
    """The text the SDK signs for this request.

    ``path`` is the request path exactly as it came over the wire, still percent-encoded (the
    SDK signs ``urlparse(url).path`` of the URL it sends, after quoting every path parameter
    with ``safe=""``: a task file ``wd/out.txt`` is signed as ``wd%2Fout.txt``). A server must
    therefore pass the raw request path, never a decoded one. An absolute URL or a path with a
    query is accepted too: only its path is used.

    ``query`` is ``urllib.parse.parse_qs`` of the raw query string (either value of
    ``keep_blank_values``): names and values decoded, as the SDK's own ``parse_qs`` gives them.

    ``headers`` may use any case for its names.
    """
    method = method.upper()
    lines = [method]
    # The SDK keeps only headers with a non-empty value, names lower-cased.
    present = {name.lower(): value for name, value in headers.items() if value}
    # A body-less request other than GET and HEAD is signed with a length of "0" (requests then
    # sends "Content-Length: 0" on the wire, so both sides agree).
    if method not in ("GET", "HEAD") and "content-length" not in present:
        present["content-length"] = "0"
    lines.extend(str(present.get(name, "")) for name in SIGNED_HEADERS)
    text = "\n".join(lines) + "\n"
    text += "".join(f"{name}:{value}\n" for name, value in _ocp_headers(headers))
    text += f"/{account}{_path_only(path)}"
    text += "".join(f"\n{name}:{value}" for name, value in _signed_query(query))
    return text


def _ocp_headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The ``ocp-`` headers as the SDK signs them: ``name:value``, sorted by (name, value).

    The SDK takes every header whose name *contains* ``ocp-`` (not only those starting with it)
    and has a value. It tests the name as the client spelled it; on the server the name arrives
    in whatever case the HTTP stack kept, so it is tested here lower-cased. The SDK itself
    spells its ``ocp-date`` and ``ocp-range`` in lower case, so the two agree.
    """
    found = [(name.lower(), value) for name, value in headers.items() if value]
    return sorted((name, value) for name, value in found if "ocp-" in name)


def _signed_query(query: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """The query parameters the SDK signs: sorted by name, the FIRST non-empty value of each.

    Names keep their case (the SDK does not lower-case them) and a parameter given several
    times is signed with its first value only; parameters without a value are not signed.
    """
    signed = []
    for name in sorted(query):
        values = [value for value in query[name] if value]
        if values:
            signed.append((name, values[0]))
    return signed


def _path_only(path: str) -> str:
    if "://" in path or "?" in path:
        return urlsplit(path).path
    return path


def sign(text: str, key_b64: str) -> str:
    """The base64 HMAC-SHA256 of ``text`` (UTF-8) under the base64-encoded account key."""
    key = base64.b64decode(key_b64.encode("utf-8"))
    digest = hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("utf-8")


def verify(
    method: str,
    path: str,
    query: Mapping[str, Sequence[str]],
    headers: Mapping[str, str],
    account: str,
    key_b64: str,
) -> AuthProblem | None:
    """``None`` if the request carries a valid SharedKey signature for ``account``.

    The arguments are those of ``string_to_sign``: ``path`` is the RAW request path (still
    percent-encoded), ``query`` the ``parse_qs`` of the raw query string.
    """
    authorization = _header(headers, "authorization")
    if not authorization:
        return AuthProblem("The Authorization header is missing from the request.")
    scheme, _, credentials = authorization.partition(" ")
    if scheme != SCHEME:
        return AuthProblem(
            f"The authentication scheme {scheme!r} is not supported: "
            f"the emulator accepts only '{SCHEME} account:signature'."
        )
    name, separator, signature = credentials.strip().rpartition(":")
    if not separator or not name or not signature:
        return AuthProblem(
            "The Authorization header is not of the form 'SharedKey account:signature'."
        )
    if name != account:
        return AuthProblem(
            f"The account {name!r} named in the Authorization header is not this account "
            f"({account!r})."
        )
    text = string_to_sign(method, path, query, headers, account)
    if not _same(signature, sign(text, key_b64)):
        # The Azure services' own wording (Storage's, which Batch shares): it shows the string
        # the server signed, so the difference can be found by eye.
        return AuthProblem(
            f"The MAC signature found in the HTTP request '{signature}' is not the same as any "
            f"computed signature. Server used following string to sign: '{text}'."
        )
    return None


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of the signature sent with the one computed."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None
