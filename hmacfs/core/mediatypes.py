"""The media types a file name implies, for clients that sign a type they do not send.

Kaidan (QXmpp before 1.13) and Movim ask for an upload slot naming the file's type but send
the PUT without a Content-Type, so a Prosody v2 slot signs a type the request does not carry;
prosody-filer and the Go server then verify against the type the name's extension implies.
Clients take that type from different tables (freedesktop's shared-mime-info, a browser's,
Android's), so an extension can imply more than one; each is one more MAC to compute. The
table is the module's own, not the machine's /etc/mime.types, so that every node agrees.
"""

from __future__ import annotations

import functools
import mimetypes

from hmacfs.core.paths import file_name

#: Extensions whose type the usual tables disagree on, every spelling in use, commonest first.
_SEVERAL: dict[str, tuple[str, ...]] = {
    ".jpg": ("image/jpeg",),
    ".jpeg": ("image/jpeg",),
    ".heic": ("image/heic", "image/heif"),
    ".heif": ("image/heif", "image/heic"),
    ".m4a": ("audio/mp4", "audio/x-m4a", "audio/m4a"),
    ".aac": ("audio/aac", "audio/x-aac"),
    ".mp3": ("audio/mpeg", "audio/mp3"),
    ".ogg": ("audio/ogg", "application/ogg", "video/ogg"),
    ".oga": ("audio/ogg",),
    ".opus": ("audio/ogg", "audio/opus"),
    ".wav": ("audio/wav", "audio/x-wav", "audio/vnd.wave"),
    ".flac": ("audio/flac", "audio/x-flac"),
    ".amr": ("audio/amr",),
    ".webm": ("video/webm", "audio/webm"),
    ".mkv": ("video/x-matroska", "video/matroska"),
    ".3gp": ("video/3gpp", "audio/3gpp"),
    ".mov": ("video/quicktime",),
    ".mp4": ("video/mp4",),
    ".webp": ("image/webp",),
    ".svg": ("image/svg+xml",),
    ".zip": ("application/zip", "application/x-zip-compressed"),
    ".gz": ("application/gzip", "application/x-gzip"),
    ".7z": ("application/x-7z-compressed",),
    ".apk": ("application/vnd.android.package-archive",),
    ".vcf": ("text/vcard", "text/x-vcard"),
    ".md": ("text/markdown", "text/x-markdown"),
    ".docx": ("application/vnd.openxmlformats-officedocument.wordprocessingml.document",),
    ".xlsx": ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",),
    ".pptx": ("application/vnd.openxmlformats-officedocument.presentationml.presentation",),
    ".odt": ("application/vnd.oasis.opendocument.text",),
    ".ods": ("application/vnd.oasis.opendocument.spreadsheet",),
}
#: Python's own table only (never the machine's files).
_BUILT_IN = mimetypes.MimeTypes(filenames=())


def implied_types(rel: str) -> tuple[str, ...]:
    """The media types the file name at the end of `rel` implies, most likely first (none
    for a name without a known extension)."""
    name = file_name(rel).lower()
    dot = name.rfind(".")
    if dot <= 0:
        return ()
    return _extension_types(name[dot:])


@functools.lru_cache(maxsize=1024)
def _extension_types(extension: str) -> tuple[str, ...]:
    found = list(_SEVERAL.get(extension, ()))
    guessed, _ = _BUILT_IN.guess_type("x" + extension, strict=False)
    if guessed is not None and guessed not in found:
        found.append(guessed)
    return tuple(found)
