"""The one shard reader: open a shard, walk its tar front to back, group members into samples.

The training loader (``shard_samples``) and ``o2a inspect`` (``shard_runs``) both read
through here, so they cannot disagree about what a shard holds. Shards are opened
here (local path, ``file://`` or any fsspec URL: webdataset 1.0.2's ``gopen`` has
no ``s3://``) and parsed by a small sequential ustar/pax/GNU header parser.

Why not webdataset's own reader (``wds.tariterators.tar_file_expander``, Python's
``tarfile`` in stream mode underneath): it is slower. ``python -m benchmarks.shard_read``
(2 simulated sessions written by our writer, 512 px JPEG + json + 256 px train.png,
6 shards, 21 MB, 1014 members; page cache warm) measured webdataset / ours = 4.55 on
every member (24.2 vs 5.3 us per member) and 4.87 on whole samples against
``wds.tarfile_to_samples``; with ``--upscale 4 --subjects 1`` (2048 px JPEGs) 3.33 and
4.65 (2 cores, shared with another test run at the time). The rule: keep this parser
only while it is more than 5 % faster. It also fails loudly where ``tarfile`` stops
silently (a corrupt header after the first one ends a ``tarfile`` iteration without an error).
"""

from __future__ import annotations

from typing import IO, Any, Callable, Iterable, Iterator

#: Tar type flags of a regular file ("0", old-style "\0", contiguous "7").
_REGULAR = (b"0", b"\0", b"7")


# ---------------------------------------------------------------- opening


def open_url(url: str, storage_options: dict[str, Any] | None = None) -> IO[bytes]:
    """Open a shard for sequential binary reading: local path, ``file://`` or any fsspec URL.

    Local files are opened directly (no fsspec overhead), with a 1 MiB buffer.
    """
    if url.startswith("file://") or "://" not in url:
        return open(url.removeprefix("file://"), "rb", buffering=1 << 20)
    import fsspec

    return fsspec.open(url, "rb", **(storage_options or {})).open()


def open_shard(url: str, storage_options: dict[str, Any] | None = None) -> IO[bytes]:
    """``open_url``, failing with ``OSError("cannot open shard <url>: ...")`` whatever went wrong."""
    try:
        return open_url(url, storage_options)
    except (OSError, ValueError) as exc:
        raise OSError(f"cannot open shard {url}: {exc}") from exc


# ---------------------------------------------------------------- tar entries


def _read_exact(stream, n: int, url: str) -> bytes:
    data = stream.read(n)
    while len(data) < n:  # object-store streams may return short reads
        more = stream.read(n - len(data))
        if not more:
            raise ValueError(f"shard {url} is truncated (wanted {n} bytes, got {len(data)})")
        data += more
    return data


def _tar_number(field: bytes, url: str) -> int:
    if field[:1] and field[0] & 0x80:  # base-256 (sizes >= 8 GiB)
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ValueError(f"shard {url} is not a tar file (bad header number {field!r})") from None


def _pax_records(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] not in (b"", b"\0"):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        out[key.decode("utf-8")] = value.decode("utf-8")
        pos += length
    return out


def tar_entries(stream, url: str = "") -> Iterator[tuple[str, bytes | None]]:
    """(name, data) of every entry of a tar stream, in order, read strictly sequentially;
    ``data`` is None for an entry that is not a regular file (directory, link, device).

    Raises ``ValueError`` naming ``url`` for an empty stream, a header that fails its
    checksum ("not a tar file or is corrupt") and a stream that ends inside an entry
    ("truncated"). A stream that ends cleanly at a header boundary ends the archive.
    """
    long_name: str | None = None
    pax: dict[str, str] = {}
    first = True
    while True:
        header = stream.read(512)
        if not header and first:
            raise ValueError(f"shard {url} is empty (not a tar file)")
        if not header or header == bytes(512):
            return  # end-of-archive blocks (or a stream cut exactly at a header)
        first = False
        if len(header) < 512:
            header += _read_exact(stream, 512 - len(header), url)
        checksum = _tar_number(header[148:156], url)
        if checksum != sum(header[:148]) + 256 + sum(header[156:]):
            raise ValueError(f"shard {url} is not a tar file or is corrupt (header checksum mismatch)")
        size = int(pax["size"]) if "size" in pax else _tar_number(header[124:136], url)
        data = _read_exact(stream, size, url) if size else b""
        if size % 512:
            _read_exact(stream, 512 - size % 512, url)
        kind = header[156:157]
        if kind == b"x":  # pax extended header / GNU long name: they apply to the next entry
            pax = _pax_records(data)
            continue
        if kind == b"L":
            long_name = data.split(b"\0", 1)[0].decode("utf-8")
            continue
        if kind in (b"g", b"K"):  # pax global header, GNU long link name: nothing a shard uses
            continue
        name = header[:100].split(b"\0", 1)[0].decode("utf-8")
        if header[257:262] == b"ustar" and header[345:346] != b"\0":
            name = header[345:500].split(b"\0", 1)[0].decode("utf-8") + "/" + name
        name = pax.get("path", long_name or name)
        long_name, pax = None, {}
        if kind == b"5" or (kind == b"\0" and name.endswith("/")):  # a directory, named as tarfile names it
            yield name.rstrip("/"), None
        else:
            yield name, data if kind in _REGULAR else None


# ---------------------------------------------------------------- samples


def split_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name as webdataset splits it: at the first dot of the
    last path part. None when that part has no dot or nothing before it."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not stem or not dot:
        return None
    return (f"{folder}/{stem}" if folder else stem), ext


def sample_runs(entries: Iterable[tuple[str, bytes | None]],
                on_skip: Callable[[str, str], None] | None = None, *,
                keep_partial: bool = False) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """Contiguous runs of members with one key: ``(key, [(extension, data), ...])`` in tar order.

    An entry that is not a regular file, or whose name has no ``<key>.<extension>``
    form, goes to ``on_skip(name, reason)`` and does not end a run. A key whose members
    are not contiguous gives more than one run: the caller decides what that means.
    When reading fails, the run read so far is dropped (the loader never sees a sample
    cut short), or with ``keep_partial`` yielded before the error is raised (the
    inspector lists and checks it).
    """
    key: str | None = None
    members: list[tuple[str, bytes]] = []
    try:
        for name, data in entries:
            if data is None:
                if on_skip is not None:
                    on_skip(name, "not a regular file")
                continue
            parts = split_name(name)
            if parts is None:
                if on_skip is not None:
                    on_skip(name, "member name has no <key>.<extension> form")
                continue
            if parts[0] != key:
                if members:
                    yield key, members
                key, members = parts[0], []
            members.append((parts[1], data))
    except (ValueError, OSError):
        if keep_partial and members:
            yield key, members
        raise
    if members:
        yield key, members


def _not_meta(entries: Iterable[tuple[str, bytes | None]]) -> Iterator[tuple[str, bytes | None]]:
    for entry in entries:
        if not entry[0].rsplit("/", 1)[-1].startswith("__"):
            yield entry


def shard_runs(url: str, storage_options: dict[str, Any] | None = None, *,
               on_skip: Callable[[str, str], None] | None = None, skip_meta: bool = False,
               keep_partial: bool = False) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """``sample_runs`` of one shard, opened by ``open_shard`` and closed when the runs end.

    ``skip_meta`` leaves out members whose last path part starts with ``__`` (webdataset's
    metadata convention; the loader skips them, the inspector reports them).
    """
    stream = open_shard(url, storage_options)
    with stream:
        entries = tar_entries(stream, url)
        yield from sample_runs(_not_meta(entries) if skip_meta else entries, on_skip, keep_partial=keep_partial)


def shard_samples(src: Iterable[dict], storage_options: dict[str, Any] | None = None) -> Iterator[dict]:
    """Pipeline stage: ``{"url"}`` items -> webdataset samples ``{"__key__", "__url__", <ext>: bytes}``.

    As webdataset's ``group_by_keys``: extensions are lowercased, a member name twice in
    one sample raises, members that are not files or not named ``<key>.<ext>`` are
    ignored; a sample never spans two shards.
    """
    for item in src:
        url = item["url"]
        for key, members in shard_runs(url, storage_options, skip_meta=True):
            sample = {"__key__": key, "__url__": url}
            for ext, data in members:
                ext = ext.lower()
                if ext in sample:
                    raise ValueError(f"shard {url}: sample {key!r} has the member .{ext} twice")
                sample[ext] = data
            yield sample
