"""How the Redis backplane keeps events: the keys, an entry's fields, and
the Lua script that stores a publish (:mod:`.redis` sends it). No I/O here:
Redis is what runs :data:`PUBLISH_SCRIPT`.

An entry of a topic's stream (``trio_esper:topic:<topic>``) holds an event
in short fields: ``d`` data, ``e`` event type, ``r`` retry, ``t`` publish
time, ``w`` route (the routed log's), ``i`` the publisher's id. Its entry id
(``<ms>-<n>``) is the event's id unless the publisher gave one; the id hash
(``trio_esper:ids:<topic>``) maps publisher ids to entry ids.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from ..errors import BadRequest
from ..routing import Route, decode_route, encode_route
from ..sse import Event
from . import Record

#: Key of a topic's stream.
KEY_PREFIX = "trio_esper:topic:"
#: Key of a topic's publisher ids: a hash, publisher id -> stream entry id.
IDS_PREFIX = "trio_esper:ids:"
#: The channel every publish names its topic on (in :data:`PUBLISH_SCRIPT`).
NOTIFY_CHANNEL = "trio_esper:published"

#: A batch of publishes, each decided atomically by Redis, in the order
#: given (the writer of :mod:`.redis` sends the publishes waiting together).
#: KEYS: per publish, its stream and its id hash. ARGV: entries kept, trim
#: batch, notice channel, notice head (the sending node's token), then the
#: publishes as one JSON array (one argument to encode, one to decode: fewer
#: objects per event than an argument per field), each
#: ``[deadline (Redis' clock, ms), publisher ids unique?, topic, [[publisher
#: id or "", [field, value, ...]], ...]]``. Returns a JSON array with, per
#: publish, ``["ok", last entry id before it, entry ids...]``, ``["late", ms
#: late]``, ``["conflict", id]`` or ``["error", message]`` (one publish's
#: failure, caught, is its own). One notice names every topic stored to,
#: after the head, one a line (topics have no line breaks).
PUBLISH_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local keep, trim = tonumber(ARGV[1]), tonumber(ARGV[2])
local function publish(stream, ids, p)
  local late = now - p[1]
  if late > 0 then return {'late', tostring(late)} end
  local events, seen = p[4], {}
  for e = 1, #events do
    local given = events[e][1]
    if given ~= '' then
      -- The routed log's too: a key of another type fails here, before any write.
      local retained = redis.call('HEXISTS', ids, given) == 1
      if p[2] and (seen[given] or retained) then
        return {'conflict', given}
      end
      seen[given] = true
      local fields = events[e][2]
      fields[#fields + 1] = 'i'
      fields[#fields + 1] = given
    end
  end
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  local answer = {'ok', last[1] and last[1][1] or '0-0'}
  for e = 1, #events do
    local id = redis.call('XADD', stream, '*', unpack(events[e][2]))
    if events[e][1] ~= '' then redis.call('HSET', ids, events[e][1], id) end
    answer[e + 2] = id
  end
  local excess = redis.call('XLEN', stream) - keep
  if excess >= trim then
    if redis.call('TYPE', ids).ok == 'hash' then  -- another type: another client's
      for _, entry in ipairs(redis.call('XRANGE', stream, '-', '+', 'COUNT', excess)) do
        local fields = entry[2]
        for j = 1, #fields, 2 do
          if fields[j] == 'i' and redis.call('HGET', ids, fields[j + 1]) == entry[1] then
            redis.call('HDEL', ids, fields[j + 1])
          end
        end
      end
    end
    redis.call('XTRIM', stream, 'MAXLEN', keep)
  end
  return answer
end
local answers, stored, named = {}, {}, {}
for n, p in ipairs(cjson.decode(ARGV[5])) do
  local ok, answer = pcall(publish, KEYS[n * 2 - 1], KEYS[n * 2], p)
  if not ok then
    answer = {'error', tostring(type(answer) == 'table' and answer.err or answer)}
  elseif answer[1] == 'ok' and not named[p[3]] then
    named[p[3]] = true
    stored[#stored + 1] = p[3]
  end
  answers[n] = answer
end
if #stored > 0 then
  redis.call('PUBLISH', ARGV[3], ARGV[4] .. '\\n' .. table.concat(stored, '\\n'))
end
return cjson.encode(answers)
"""

#: Redis' clock in milliseconds, as :data:`PUBLISH_SCRIPT` reads it (coredis'
#: ``time()`` drops the fraction of the second). Writes nothing, so Redis runs
#: it even when out of memory.
CLOCK_SCRIPT = """
local clock = redis.call('TIME')
return tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""


def trim_batch(max_events_per_topic: int) -> int:
    """A stream is trimmed to ``max_events_per_topic`` once it holds this many
    more: trimming (and forgetting the trimmed entries' publisher ids) is then
    paid once per batch, not per publish, as ``MAXLEN ~`` would."""
    return max(1, min(100, max_events_per_topic // 10))


def seq_of(entry_id: str) -> int:
    """A stream entry id as an integer in the same order (milliseconds, then
    the sequence within the millisecond), one to one: each part is 64 bits
    (another client may give an id ahead of the clock with a sequence past
    any smaller bound, and the broker's entries then follow it in that
    millisecond: a cap would give them one seq, and a resumed stream would
    take the later ones for replayed)."""
    millis, _, sequence = entry_id.partition("-")
    return (int(millis) << 64) | int(sequence or 0)


def valid_entry_id(text: str) -> bool:
    millis, dash, sequence = text.partition("-")
    return (
        bool(dash) and f"{millis}{sequence}".isascii() and millis.isdigit() and sequence.isdigit()
    )


#: Each part of an entry id is an unsigned 64-bit number, and Redis takes
#: no longer id than this (else: ``Invalid stream ID``).
MAX_ID_PART = (1 << 64) - 1
MAX_ID_CHARS = 127
#: The last id a stream can hold: Redis adds nothing after it, and refuses
#: to read after it (``invalid start ID``). Only another client puts it there.
LAST_ENTRY_ID = f"{MAX_ID_PART}-{MAX_ID_PART}"


def stream_id(text: str) -> tuple[int, int] | None:
    """``text`` as the entry id Redis reads it (milliseconds, sequence), or
    ``None`` if Redis takes it for none: not :func:`valid_entry_id`, or out
    of Redis' bounds (a client's ``Last-Event-ID``, another client's value)."""
    if not valid_entry_id(text) or len(text) > MAX_ID_CHARS:
        return None
    millis, _, sequence = text.partition("-")
    parts = int(millis), int(sequence)
    return parts if max(parts) <= MAX_ID_PART else None


#: What decoding an entry that is not the broker's raises: one another client
#: wrote under the broker's keys (not UTF-8, a number or a route that does
#: not parse, a field that would change the stream's meaning; a route nested
#: deeper than the JSON parser goes raises RecursionError, not ValueError).
UNDECODABLE = (ValueError, KeyError, TypeError, RecursionError, BadRequest)

#: A stream entry as it comes from Redis: its id, then its fields and values
#: in pairs.
RawEntry = tuple[bytes, Iterable[tuple[bytes, bytes]]]


def record_of(topic: str, entry_id: str, fields: dict[str, str]) -> Record:
    """Raises: one of :data:`UNDECODABLE` if the entry is not the broker's."""
    retry = fields.get("r")
    event_id = fields.get("i") or entry_id
    event = Event(fields.get("d", ""), fields.get("e"), event_id, int(retry) if retry else None)
    route = fields.get("w")
    when = float(fields.get("t", 0.0))
    if not math.isfinite(when):  # float() takes "nan" and "inf"; JSON does not
        raise ValueError(f"not a publish time: {when}")
    return Record.create(
        seq_of(entry_id),
        topic,
        event,
        when,
        None if route is None else decode_route(route),
    )


def records_of(topic: str, entries: Iterable[RawEntry]) -> tuple[list[Record], int]:
    """``topic``'s records in ``entries``, in order, and how many entries
    were skipped because they do not decode (:data:`UNDECODABLE`): what
    another client writes under the broker's keys is not the broker's to
    deliver, and must not stop the rest."""
    records: list[Record] = []
    skipped = 0
    for entry_id, pairs in entries:
        try:
            fields = {field.decode(): value.decode() for field, value in pairs}
            records.append(record_of(topic, entry_id.decode(), fields))
        except UNDECODABLE:
            skipped += 1
    return records, skipped


def pairs_of(flat: Sequence[bytes]) -> Iterable[tuple[bytes, bytes]]:
    """An entry's fields and values as RESP2 sends them, one after the
    other, in pairs (an odd count raises ``ValueError`` as they are taken)."""
    return zip(flat[::2], flat[1::2], strict=True)


def publish_entry(
    deadline_ms: int,
    unique: bool,
    topic: str,
    events: Sequence[Event],
    fields: Iterable[list[str]],
) -> list[object]:
    """One publish's element of :data:`PUBLISH_SCRIPT`'s JSON array."""
    return [
        deadline_ms,
        unique,
        topic,
        [[event.id or "", pairs] for event, pairs in zip(events, fields, strict=True)],
    ]


def entry_fields(event: Event, when: float, route: Route | None) -> list[str]:
    """An entry's fields and values, one after the other."""
    fields = ["d", event.data, "t", repr(when)]
    if event.event is not None:
        fields += ("e", event.event)
    if event.retry is not None:
        fields += ("r", str(event.retry))
    if route is not None:
        fields += ("w", encode_route(route))
    return fields
