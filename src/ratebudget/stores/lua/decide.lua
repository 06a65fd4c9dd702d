--[[
ratebudget: one batch of store operations on one name's state, atomically,
in one script call (EVALSHA).

A line-by-line mirror, under the same names, of the decision core
``_decide.py`` (the state classes and the decisions), of ``stores/_ops.py``
(``run``, ``_poll``, ``_leave``, ``_entry_result``) and of
``stores/_state.py`` (``load``, ``dump``, ``run_document``).
``tests/test_store_vectors.py`` runs the same batches through this script,
through ``run_document`` and through the SQLite store, and compares their
answers and the state they leave: change them together.

KEYS (every key of limiter <name> carries the hash tag {<name>}, so one
script call stays in one Redis Cluster slot):

  KEYS[1]  {<name>}:s  string: the state document (JSON, see _state.py)
  KEYS[2]  {<name>}:r  hash: lease id -> its record (JSON)
  KEYS[3]  {<name>}:x  zset: lease id -> the record's exp (µs)
  KEYS[4]  {<name>}:ledger  stream: ledger rows, only for a batch that carries
           some (ARGV[1].book names it; down a path: the root's, the last key)

ARGV[1] is a JSON object:

  plan     the caller's plan: ["r", key, rate, per, cap, debt or null] |
           ["c", key, limit, kind, per or null, tz], in its order (a cap's
           kind: 0 soft, 1 hard, 2 shadow: hard, but it only reports)
  pid      its id (_state.plan_id); pdoc: its document (_state._plan_doc)
  ops      the batch, as _codec.encode_op writes each op
  now      µs of wall-clock time, or -1: Redis' TIME
  ttl      the lease TTL (µs); keep: how long settled records stay (µs)
  idle     ms the three keys outlive the batch (plus the lease TTL)
  windows  {capkey: [[period, start, end], ...]}: for each calendar cap of
           the plan, the periods around the client's wall clock (previous,
           current, next; µs)
  shard    true on a Redis Cluster with sharded pub/sub (Redis 7+): wake-ups
           go out with SPUBLISH (heard on the slot's shard) rather than
           PUBLISH (broadcast to every node); absent elsewhere

ARGV[2...] repeat what the hot path needs as plain strings, sent only with a
batch of acquisitions on a plan of rates alone (see "the hot path" below).

It returns one JSON string: {"results": [...], "now": µs, "woken": [[key,
result], ...]}, each result as _codec.encode_result writes it, and
"shadowed": [...] (_codec.encode_shadowed) when a shadow cap would have
refused something; but the hot path (below) returns an array of integers:
the store's time, then each acquisition's take, or 0 for "none". Every write
comes after every decision, so an error (Redis does not roll a script back)
writes nothing. A batch that woke waiters PUBLISHes their keys (a JSON list)
on {<name>}:wake for the processes they wait in.

Calendar periods: Lua knows no time zones, so a counter whose period ended
rolls into the window of ARGV.windows that holds the store's (clamped)
time; a counter the caller sent no window for (another limiter's cap), or
whose windows do not hold that time (a client clock far from the store's),
keeps its period until a caller that has the window runs. _state.py's
``load`` gives the Python core its windows the same way, so the two agree.

Numbers are Lua doubles, exact for integers below 2^53: the client refuses
plans that could leave that range (RedisStore.validate), and record/settle
answer "inexact" (State.exact) instead of counting past it. Integers are
written back with "%.0f" by the encoder below (cjson keeps 14 digits only,
and cjson.encode_number_precision goes no higher), and a number that is not
an integer is an error, never rounded.
Ticks are microseconds (the shared stores' tick_ns = 1000).

Cost: the script runs from the top at every call, and what it makes before
it returns (closures, tables, decoded JSON) is most of its time. So the hot
path (acquisitions on a plan of rates alone, nobody queued, no cap counters,
no lease records: a lone caller's every call) comes first, inline, reads its
arguments from ARGV[2...] (below) rather than decoding ARGV[1], writes the
state with one format per bucket ('%d': a double's '%.0f' costs several
times more), answers with integers rather than JSON, and returns before the
rest of the mirror is made: about a third of the general path's server time
(measured with INFO commandstats). The state keeps its TTL through SET ...
PX, and the lease keys get theirs only while they hold records.
]]

local S, R, X = KEYS[1], KEYS[2], KEYS[3]

-- the store's time (µs) and the state document (its text, and decoded)
local now, raw, doc

-- The hot path: acquisitions on a plan of rates alone, with nobody queued, no
-- cap counters and no lease records, decided as the rest of the script decides
-- them (load, run_clock, take_now, dump and the writes), inline, before
-- anything else is made: no JSON argument to decode, no function to make.
-- The client sends its arguments only for such a batch (RedisStore._request):
--
--   ARGV[2]  now (µs, or -1: Redis' TIME)
--   ARGV[3]  how long the state is kept (ms: idle + the lease TTL)
--   ARGV[4]  n, the plan's number of rates; then, for each, in the plan's order:
--            its key, rate, per, cap
--   then, for each acquisition: wait (0 or 1) and its n amounts
--
-- It leaves the block (break) having written nothing for any other state, a
-- value it cannot write as an integer, or an acquisition that would wait; the
-- rest of the script then decides the whole batch (``dirty``: from the state
-- as it was read).
-- The hot paths' own pieces (this one state and the path's below): take
-- ``amount`` from a bucket row [rate, per, cap, level, last, full, peaks] at
-- ``at`` (Bucket.now, Bucket.mark and the take of take_now, inlined), or
-- take nothing and say so (its level refilled all the same)
local function hot_take(row, amount, at, next_take)
    local level, cap = row[4], row[3]
    if level < cap then
        level = level + row[1] * (at - row[5])
        if level > cap then
            level = cap
        end
    end
    row[5] = at
    if level >= cap then
        row[6] = next_take
        if #row[7] > 0 then
            row[7] = {}
        end
    else
        row[4] = level
        local peaks = row[7]
        local top = #peaks
        while top > 0 and peaks[top][2] <= level do
            peaks[top] = nil
            top = top - 1
        end
        peaks[top + 1] = { next_take, level }
        if top + 1 > 32 then -- PEAKS_KEPT
            peaks[2][2] = peaks[1][2]
            table.remove(peaks, 1)
        end
    end
    local want = amount * row[2]
    if level < want then
        row[4] = level
        return false
    end
    row[4] = level - want
    return true
end

-- a state of rates alone as its document, one format per bucket; nil if a
-- number is not an integer below 2^53 or a key needs escaping (the rest of the
-- script then writes it; ``plain``: the keys known to need none, as a set).
-- '%d' prints such a number as fmt (below) does: as '%.0f', but never "-0".
local HOT_MAX = 2 ^ 53
local function hot_ints(a, b, c, d, e, f) -- six integers below 2^53?
    local m = HOT_MAX
    return a % 1 == 0 and a < m and a > -m and b % 1 == 0 and b < m and b > -m
        and c % 1 == 0 and c < m and c > -m and d % 1 == 0 and d < m and d > -m
        and e % 1 == 0 and e < m and e > -m and f % 1 == 0 and f < m and f > -m
end

local function hot_dump(clock, wall, take, buckets, plain)
    if not hot_ints(clock, wall, take, 0, 0, 0) then
        return nil
    end
    local key, row = next(buckets)
    if key ~= nil and next(buckets, key) == nil and #row[7] == 0 then
        -- one bucket without peaks (a rate its callers do not drain): one format
        if not plain[key] and string.find(key, '[%c"\\]')
            or not hot_ints(row[1], row[2], row[3], row[4], row[5], row[6]) then
            return nil
        end
        return string.format(
            '{"clock":%d,"wall":%d,"take":%d,"b":{"%s":[%d,%d,%d,%d,%d,%d,[]]},'
                .. '"c":{},"p":{},"q":[]}',
            clock, wall, take, key, row[1], row[2], row[3], row[4], row[5], row[6]
        )
    end
    local out, m = {
        string.format('{"clock":%d,"wall":%d,"take":%d,"b":{', clock, wall, take),
    }, 1
    for key, row in pairs(buckets) do
        local r1, r2, r3, r4, r5, r6 = row[1], row[2], row[3], row[4], row[5], row[6]
        if not plain[key] and string.find(key, '[%c"\\]')
            or not hot_ints(r1, r2, r3, r4, r5, r6) then
            return nil
        end
        out[m + 1] = string.format(
            '%s"%s":[%d,%d,%d,%d,%d,%d,[', m == 1 and '' or ',', key,
            r1, r2, r3, r4, r5, r6
        )
        m = m + 1
        for p, peak in ipairs(row[7]) do
            local t, l = peak[1], peak[2]
            if not hot_ints(t, l, 0, 0, 0, 0) then
                return nil
            end
            out[m + 1] = string.format(p == 1 and '[%d,%d]' or ',[%d,%d]', t, l)
            m = m + 1
        end
        out[m + 1] = ']]'
        m = m + 1
    end
    out[m + 1] = '},"c":{},"p":{},"q":[]}'
    return table.concat(out)
end

local dirty = false
repeat
    if ARGV[2] == nil or ARGV[2] == 'path' then
        break
    end
    now = tonumber(ARGV[2])
    if now < 0 then
        local t = redis.call('TIME')
        now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    end
    raw = redis.call('GET', S)
    local clock, wall, take, buckets = 0, 0, 0, {}
    if raw then
        doc = cjson.decode(raw)
        if #doc.q > 0 or next(doc.c) ~= nil then
            break
        end
        clock, wall, take, buckets = doc.clock, doc.wall, doc.take, doc.b
    end
    if redis.call('ZCARD', X) > 0 then
        break
    end
    -- bind (State.bucket): a bucket row is [rate, per, cap, level, last,
    -- full, peaks], as the state document keeps it; the plan's keys need no
    -- escaping in JSON (the client sends no others here)
    dirty = true
    local n = tonumber(ARGV[4])
    local rows, plain = {}, {}
    for i = 1, n do
        local slot = 4 * i
        local key = ARGV[slot + 1]
        plain[key] = true
        local row = buckets[key]
        if row == nil then
            local cap = tonumber(ARGV[slot + 4])
            row = { tonumber(ARGV[slot + 2]), tonumber(ARGV[slot + 3]), cap, cap, now, 0, {} }
            buckets[key] = row
        end
        rows[i] = row
    end
    -- run_clock: the store's clock never goes back
    local at = now
    if at < clock then
        at = clock
    end
    clock = at
    if wall < at then
        wall = at
    end
    -- each acquisition: take_now (Bucket.mark inlined), or "none", or leave
    -- the reply: the store's time, then each acquisition's take (granted) or
    -- 0 ("none"), as integers (RedisStore._answer reads it)
    local results, waits = { 0 }, false
    local first = 4 * n + 5
    for k = 1, (#ARGV - first + 1) / (n + 1) do
        local base = first + (k - 1) * (n + 1)
        local next_take, short = take + 1, false
        for i = 1, n do
            local amount = tonumber(ARGV[base + i])
            if amount ~= 0 then
                local row = rows[i]
                if not hot_take(row, amount, at, next_take) then
                    for j = 1, i - 1 do -- put back what was taken
                        local earlier = rows[j]
                        if earlier == row then
                            break
                        end
                        earlier[4] = earlier[4] + tonumber(ARGV[base + j]) * earlier[2]
                    end
                    short = true
                    break
                end
            end
        end
        if not short then
            take = next_take
            results[k + 1] = take
        elseif ARGV[base] == '0' then
            results[k + 1] = 0
        else
            waits = true
            break
        end
    end
    if waits then
        break
    end
    -- dump: every number an integer (else the rest of the script says so)
    local text = hot_dump(clock, wall, take, buckets, plain)
    if text == nil then
        break
    end
    redis.call('SET', S, text, 'PX', ARGV[3])
    results[1] = clock -- an integer below 2^53, as every take (hot_dump)
    return results
until true

-- The same hot path down a path of scopes (RedisStore.execute_path): every
-- level a plan of rates alone, nobody queued, no cap counters, no lease
-- records; each acquisition takes from every level at once, or the rest of
-- the script decides the whole batch (from the states as they were read:
-- this block writes nothing unless it decides everything).
--
--   ARGV[2]  'path'; ARGV[3] now (µs, or -1: Redis' TIME); ARGV[4] how long
--            each state is kept (ms); ARGV[5] L, the number of levels; then,
--            for each level (nearest first), n and its n rates' key, rate,
--            per and cap; then, for each acquisition: wait (0 or 1) and the
--            amounts of every level's rates, in that order
repeat
    if ARGV[2] ~= 'path' then
        break
    end
    local t_now = tonumber(ARGV[3])
    if t_now < 0 then
        local t = redis.call('TIME')
        t_now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    end
    local nl = tonumber(ARGV[5])
    local lv, at, pos, total = {}, t_now, 6, 0
    local plain = {} -- the plans' keys: they need no escaping (as above)
    local ok = true
    for k = 1, nl do
        local s_key = KEYS[3 * k - 2]
        local text = redis.call('GET', s_key)
        local clock, wall, take, buckets = 0, 0, 0, {}
        if text then
            local d = cjson.decode(text)
            if #d.q > 0 or next(d.c) ~= nil then
                ok = false
                break
            end
            clock, wall, take, buckets = d.clock, d.wall, d.take, d.b
        end
        if redis.call('ZCARD', KEYS[3 * k]) > 0 then
            ok = false
            break
        end
        local n = tonumber(ARGV[pos])
        local rows = {}
        for i = 1, n do
            local base = pos + 4 * (i - 1)
            local key = ARGV[base + 1]
            plain[key] = true
            local row = buckets[key]
            if row == nil then
                local cap = tonumber(ARGV[base + 4])
                row = { tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), cap, cap, t_now, 0, {} }
                buckets[key] = row
            end
            rows[i] = row
        end
        pos = pos + 4 * n + 1
        total = total + n
        if clock > at then
            at = clock -- run_path: the latest clock of the path
        end
        lv[k] = { S = s_key, clock = clock, wall = wall, take = take, buckets = buckets,
            rows = rows, n = n }
    end
    if not ok then
        break
    end
    for k = 1, nl do
        local l = lv[k]
        l.clock = at
        if l.wall < at then
            l.wall = at
        end
    end
    -- each acquisition: take_now at every level, or leave
    local results = {}
    local count = (#ARGV - pos + 1) / (total + 1)
    for a = 1, count do
        local base = pos + (a - 1) * (total + 1)
        local off = base
        local takes = {}
        for k = 1, nl do
            local l = lv[k]
            local next_take = l.take + 1
            for i = 1, l.n do
                local amount = tonumber(ARGV[off + i])
                if amount ~= 0 then
                    if not hot_take(l.rows[i], amount, at, next_take) then
                        ok = false -- a rate falls short: the whole way
                        break
                    end
                end
            end
            if not ok then
                break
            end
            l.take = next_take
            takes[k] = string.format('%d', next_take) -- (hot_dump checks it)
            off = off + l.n
        end
        if not ok then
            break
        end
        results[a] = '["granted",[' .. table.concat(takes, ',') .. ']]'
    end
    if not ok then
        break
    end
    -- dump every level: every number an integer (else the rest decides)
    local texts = {}
    for k = 1, nl do
        local l = lv[k]
        texts[k] = hot_dump(l.clock, l.wall, l.take, l.buckets, plain)
        if texts[k] == nil then
            ok = false
            break
        end
    end
    if not ok then
        break
    end
    for k = 1, nl do
        redis.call('SET', lv[k].S, texts[k], 'PX', ARGV[4])
    end
    return '{"results":[' .. table.concat(results, ',') .. '],"now":'
        .. string.format('%d', at) .. ',"woken":[]}'
until true
if dirty and raw then
    doc = cjson.decode(raw) -- its rows were changed: start afresh
end
local NULL = cjson.null
local floor, fmod, huge = math.floor, math.fmod, math.huge
local insert, remove, concat = table.insert, table.remove, table.concat
local format, find, gsub = string.format, string.find, string.gsub

local args = cjson.decode(ARGV[1])

-- _decide.py's constants ---------------------------------------------------

-- an entry's state
local WAITING, GRANTED, FAILED, CLAIMED = 0, 1, 2, 3
-- a lease record's state
local ACTIVE, EXPIRED, SETTLED, UNCLAIMED, REFUSED = 1, 2, 3, 4, 5
local PEAKS_KEPT = 32
-- State.exact: every integer below 2^53 is an exact double, and a sum that
-- reaches 2^53 rounds to at least 2^53, so comparing it with 2^53 - 1 decides
-- as Python's integers do (RedisStore.check keeps each amount below 2^51)
local EXACT = 2 ^ 53 - 1

-- Python's None and JSON's null
local function nn(x) -- None -> null
    if x == nil then
        return NULL
    end
    return x
end

local function nul(x) -- null -> None
    if x == NULL then
        return nil
    end
    return x
end

-- Python's a // b, exact for integers below 2^53
local function fdiv(a, b)
    local r = fmod(a, b)
    if r ~= 0 and (r < 0) ~= (b < 0) then
        r = r + b
    end
    return (a - r) / b
end

local function fmt(x)
    if x == 0 then
        return '0' -- never "-0"
    end
    return format('%.0f', x)
end

-- JSON out: objects are the tables made by object(), every other table is
-- an array (null entries are cjson.null, never holes) -----------------------

local OBJECT = {}

local function object(t)
    return setmetatable(t, OBJECT)
end

local ESCAPES = {
    ['"'] = '\\"',
    ['\\'] = '\\\\',
    ['\b'] = '\\b',
    ['\f'] = '\\f',
    ['\n'] = '\\n',
    ['\r'] = '\\r',
    ['\t'] = '\\t',
}

local function escape(c)
    return ESCAPES[c] or format('\\u%04x', string.byte(c))
end

local function quote(s)
    if not find(s, '[%c"\\]') then
        return '"' .. s .. '"'
    end
    return '"' .. (gsub(s, '[%c"\\]', escape)) .. '"'
end

-- an integer as JSON (anything else is an error: nothing is rounded)
local function integer(v)
    if v ~= v or v == huge or v == -huge or v ~= floor(v) then
        error('ratebudget: not an integer: ' .. tostring(v))
    end
    return fmt(v)
end

-- append ``v`` to ``out`` after its ``n`` pieces; the new count
local function encode_into(out, n, v)
    local kind = type(v)
    if kind == 'number' then
        n = n + 1
        out[n] = integer(v)
    elseif kind == 'string' then
        n = n + 1
        out[n] = quote(v)
    elseif v == nil or v == NULL then
        n = n + 1
        out[n] = 'null'
    elseif kind == 'boolean' then
        n = n + 1
        out[n] = v and 'true' or 'false'
    elseif getmetatable(v) == OBJECT then
        local sep = '{'
        for k, x in pairs(v) do
            out[n + 1], out[n + 2], out[n + 3] = sep, quote(k), ':'
            n = encode_into(out, n + 3, x)
            sep = ','
        end
        if sep == '{' then
            n = n + 1
            out[n] = '{}'
        else
            n = n + 1
            out[n] = '}'
        end
    else
        local count = #v
        if count == 0 then
            n = n + 1
            out[n] = '[]'
        else
            for i = 1, count do
                n = n + 1
                out[n] = i == 1 and '[' or ','
                n = encode_into(out, n, v[i])
            end
            n = n + 1
            out[n] = ']'
        end
    end
    return n
end

local function encode(v)
    local out = {}
    encode_into(out, 0, v)
    return concat(out)
end

-- _decide.py: state ----------------------------------------------------------

local function refill(level, last, now, rate, cap)
    if now <= last or level >= cap then
        return level
    end
    level = level + rate * (now - last)
    if level > cap then
        return cap
    end
    return level
end

local function wait_ticks(level, need, rate)
    if level >= need then
        return 0
    end
    return -fdiv(level - need, rate)
end

-- class Bucket
local function Bucket(key, rate, per, cap, level, last)
    return {
        key = key, rate = rate, per = per, cap = cap, level = level, last = last,
        full = 0, peaks = {},
    }
end

-- Bucket.now
local function bucket_now(b, now)
    local level = b.level
    if now > b.last then
        if level < b.cap then
            level = level + b.rate * (now - b.last)
            if level > b.cap then
                level = b.cap
            end
            b.level = level
        end
        b.last = now
    end
    return level
end

-- Bucket.mark
local function bucket_mark(b, take)
    local level = b.level
    if level >= b.cap then
        b.full = take
        if #b.peaks > 0 then
            b.peaks = {}
        end
        return
    end
    local peaks = b.peaks
    while #peaks > 0 and peaks[#peaks][2] <= level do
        peaks[#peaks] = nil
    end
    peaks[#peaks + 1] = { take, level }
    if #peaks > PEAKS_KEPT then
        peaks[2][2] = peaks[1][2]
        remove(peaks, 1)
    end
end

-- reserve ``req`` on the plan's caps
local function reserve(plan, req)
    for _, cs in ipairs(plan.caps) do
        local c = cs[2].counter
        c.reserved = c.reserved + req[cs[1]]
    end
end

-- the hot path of acquire: take ``req`` from every rate at ``now`` and reserve
-- it on the caps, or take nothing (0) when a rate falls short
local function take_now(st, plan, req, now)
    -- refill each rate involved, note its level for refunds (Bucket.mark, its
    -- common case inlined) and take; if one falls short, put back what was
    -- taken
    local take = st.take + 1
    local rates = plan.rates
    for _, r in ipairs(rates) do
        local i, b = r[1], r[2]
        local n = req[i]
        if n ~= 0 then
            local level = b.level
            local cap = b.cap
            if level < cap then
                level = level + b.rate * (now - b.last)
                if level > cap then
                    level = cap
                end
            end
            b.last = now
            if level >= cap then
                b.full = take
                if #b.peaks > 0 then
                    b.peaks = {}
                end
            else
                b.level = level
                bucket_mark(b, take)
            end
            local need = n * b.per
            if level < need then
                b.level = level
                for _, r2 in ipairs(rates) do
                    local b2 = r2[2]
                    if b2 == b then
                        break
                    end
                    b2.level = b2.level + req[r2[1]] * b2.per
                end
                return 0
            end
            b.level = level - need
        end
    end
    st.take = take
    reserve(plan, req)
    return take
end

-- the store's time and the state document ------------------------------------

if now == nil then -- the hot path did not run
    now = args.now
    if now < 0 then
        local t = redis.call('TIME')
        now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    end
    raw = redis.call('GET', S)
    if raw then
        doc = cjson.decode(raw)
    end
end

-- the start of ``run``: the store's clock never goes back; its (clamped) time
local function run_clock(st, now)
    if now < st.clock then
        now = st.clock
    end
    st.clock = now
    if st.wall < now then
        st.wall = now
    end
    return now
end

-- Bucket.refund
local function bucket_refund(b, since, amount, now)
    local level = bucket_now(b, now)
    if b.full > since then
        return
    end
    local peak = level
    for _, p in ipairs(b.peaks) do
        if p[1] > since then
            if p[2] > peak then
                peak = p[2]
            end
            break
        end
    end
    local room = b.cap - peak
    if room > 0 then
        if amount < room then
            b.level = level + amount
        else
            b.level = level + room
        end
    end
end

-- Bucket.charge
local function bucket_charge(b, amount, now, take)
    bucket_now(b, now)
    bucket_mark(b, take)
    local level = b.level - amount
    if b.debt ~= nil and level < -b.debt then
        level = -b.debt
    end
    b.level = level
end

-- Bucket.fill
local function bucket_fill(b, now, take)
    b.level = b.cap
    if now > b.last then
        b.last = now
    end
    b.full = take
    b.peaks = {}
end

-- Bucket.lower
local function bucket_lower(b, top, now)
    if bucket_now(b, now) > top then
        b.level = top
        return true
    end
    return false
end

-- class Counter: ``window`` is the list of windows it may roll into
-- (ARGV.windows), nil for a lifetime cap
-- peak, noted: the period's alert latches (the most its usage reached; whether
-- a shadow refusal was reported)
local function Counter(key, window)
    return {
        key = key, window = window, period = '', end_ = nil, used = 0, reserved = 0,
        peak = 0, noted = false,
    }
end

-- Counter.add: count n more used; the usage alerts start from
local function counter_add(c, n)
    local before = c.used
    local peak = c.peak
    if before > peak then
        peak = before
    end
    c.used = before + n
    if c.used > peak then
        c.peak = c.used
    end
    return peak
end

-- the window of ``windows`` holding ``wall`` (_state._known)
local function window_at(wins, wall)
    for _, w in ipairs(wins) do
        if w[2] <= wall and wall < w[3] then
            return w
        end
    end
    return nil
end

-- Counter.roll
local function counter_roll(c, wall)
    local e = c.end_
    if (e == nil or wall < e) and (c.period ~= '' or c.window == nil) then
        return false
    end
    assert(c.window ~= nil)
    local got = window_at(c.window, wall)
    if got == nil then
        return false
    end
    if got[1] == c.period then
        return false
    end
    c.period, c.end_, c.used = got[1], got[3], 0
    c.peak, c.noted = 0, false
    return true
end

-- class CapSlot; ``kind`` as a plan document writes it: 0 soft, 1 hard, 2 shadow
local function CapSlot(counter, limit, kind)
    return { counter = counter, limit = limit, hard = kind == 1, shadow = kind == 2 }
end

-- class Plan: rates, caps, hard, shadow hold {slot index (from 1), slot}
local function Plan(slots)
    local p = {
        slots = slots, rates = {}, caps = {}, hard = {}, shadow = {}, calendar = false,
    }
    for i, s in ipairs(slots) do
        if s.counter == nil then
            insert(p.rates, { i, s })
        else
            insert(p.caps, { i, s })
            if s.hard then
                insert(p.hard, { i, s })
            end
            if s.shadow then
                insert(p.shadow, { i, s })
            end
            if s.counter.window ~= nil then
                p.calendar = true
            end
        end
    end
    return p
end

-- class Entry
local function Entry()
    return {
        id = '', plan = nil, req = {}, state = WAITING, deadline = nil,
        timeout_at = nil, error = nil, take = 0, alive = nil,
    }
end

-- class Record: caps holds {counter, n}
local function Record(status, exp, take, caps, err)
    return { status = status, exp = exp, take = take, caps = caps, error = err }
end

-- class State: the queue is an array, head first
local function State(ttl, keep, live)
    return {
        clock = 0, wall = 0, take = 0, buckets = {}, counters = {}, queue = {},
        projection = nil, next_roll = huge, ttl = ttl, keep = keep, exact = nil,
        live = live, records = {}, woken = {}, next_exp = nil, shadowed = {},
    }
end

-- State.bucket
local function st_bucket(st, key, rate, per, cap, now, debt)
    local got = st.buckets[key]
    if got == nil then
        got = Bucket(key, rate, per, cap, cap, now)
        st.buckets[key] = got
    end
    got.debt = debt
    return got
end

-- State.counter
local function st_counter(st, key, window)
    local got = st.counters[key]
    if got == nil then
        got = Counter(key, window)
        st.counters[key] = got
    elseif got.window == nil and window ~= nil then
        got.window = window
    end
    return got
end

-- State.set_roll
local function set_roll(st)
    local low = huge
    local fresh = false
    for _, c in pairs(st.counters) do
        if c.end_ ~= nil and c.end_ < low then
            low = c.end_
        end
        if c.period == '' and c.window ~= nil then
            fresh = true
        end
    end
    if fresh then
        st.next_roll = -huge -- a counter that has no period yet
    else
        st.next_roll = low
    end
end

local function unqueue(st, e)
    for k, x in ipairs(st.queue) do
        if x == e then
            remove(st.queue, k)
            return
        end
    end
end

local function queued(st, e)
    for _, x in ipairs(st.queue) do
        if x == e then
            return true
        end
    end
    return false
end

-- _decide.py: time -------------------------------------------------------------

local function _roll(st, wall)
    if wall < st.next_roll then
        return
    end
    for _, c in pairs(st.counters) do
        if c.window ~= nil then
            counter_roll(c, wall)
        end
    end
    set_roll(st)
end

local function reclaim(st, now)
    local records = st.records
    for lease_id, rec in pairs(records) do
        if rec.exp <= now then
            if rec.status == ACTIVE or rec.status == UNCLAIMED then
                for _, cn in ipairs(rec.caps) do
                    cn[1].reserved = cn[1].reserved - cn[2]
                end
                rec.status, rec.exp, rec.caps = EXPIRED, now + st.keep, {}
                st.projection = nil
            else
                records[lease_id] = nil
            end
        end
    end
end

-- ticks (µs) from ``wall`` to ``e``: -(-(e - wall) * 1000 // tick_ns)
local function ticks_until(wall, e)
    return e - wall
end

-- _decide.py: the decisions --------------------------------------------------------

-- Exceeded, TooLong, Inexact and Crossing are kept as _codec writes them

local function _exceeded(i, cap)
    local c = cap.counter
    return { 'x', i - 1, c.used, c.reserved, c.period, nn(c.end_) }
end

local function _certain_overrun(plan, req)
    for _, h in ipairs(plan.hard) do
        local i, cap = h[1], h[2]
        local n = req[i]
        if n ~= 0 and cap.counter.used + n > cap.limit then
            return _exceeded(i, cap)
        end
    end
    return nil
end

-- what shadow caps would have refused (``reserved``: counting reservations)
local function _shadow(st, plan, req, reserved)
    for _, h in ipairs(plan.shadow) do
        local i, cap = h[1], h[2]
        local n = req[i]
        local c = cap.counter
        if n ~= 0 and c.used + (reserved and c.reserved or 0) + n > cap.limit then
            local first = c.noted and 0 or 1
            c.noted = true
            insert(st.shadowed, { i - 1, c.used, c.reserved, n, c.period, nn(c.end_), first })
        end
    end
end

local function _caps_fit(plan, req)
    for _, h in ipairs(plan.hard) do
        local i, cap = h[1], h[2]
        local n = req[i]
        if n ~= 0 and cap.counter.used + cap.counter.reserved + n > cap.limit then
            return false
        end
    end
    return true
end

local function _rate_wait(plan, req, now)
    local longest = 0
    for _, r in ipairs(plan.rates) do
        local i, b = r[1], r[2]
        local level = bucket_now(b, now)
        local need = req[i] * b.per
        if need ~= 0 and level < need then
            local w = -fdiv(level - need, b.rate)
            if w > longest then
                longest = w
            end
        end
    end
    return longest
end

local function _take(st, plan, req)
    local take = st.take + 1
    st.take = take
    for _, r in ipairs(plan.rates) do
        local i, b = r[1], r[2]
        local n = req[i]
        if n ~= 0 then
            bucket_mark(b, take)
            b.level = b.level - n * b.per
        end
    end
    reserve(plan, req)
    return take
end

local function _record_grant(st, lease_id, plan, req, take, status)
    local caps = {}
    for _, cs in ipairs(plan.caps) do
        local n = req[cs[1]]
        if n ~= 0 then
            insert(caps, { cs[2].counter, n })
        end
    end
    if #caps > 0 or status == UNCLAIMED then
        st.records[lease_id] = Record(status, st.clock + (st.ttl or 0), take, caps)
    end
end

-- the foreseeable schedule of the queue: levels maps a bucket to {level, time}

-- levels.get(b) or (b.level, b.last)
local function projected(levels, b)
    local lt = levels[b]
    if lt ~= nil then
        return lt[1], lt[2]
    end
    return b.level, b.last
end

local function _step(at, levels, plan, req)
    local grant = at
    for _, r in ipairs(plan.rates) do
        local i, b = r[1], r[2]
        local need = req[i] * b.per
        if need ~= 0 then
            local level, t = projected(levels, b)
            t = at + wait_ticks(refill(level, t, at, b.rate, b.cap), need, b.rate)
            if t > grant then
                grant = t
            end
        end
    end
    for _, r in ipairs(plan.rates) do
        local i, b = r[1], r[2]
        local need = req[i] * b.per
        if need ~= 0 then
            local level, t = projected(levels, b)
            levels[b] = { refill(level, t, grant, b.rate, b.cap) - need, grant }
        end
    end
    return grant
end

local function _tail(st, now)
    local tail = st.projection
    if tail == nil or #st.queue == 0 then
        local at, levels = now, {}
        for _, e in ipairs(st.queue) do
            at = _step(at, levels, e.plan, e.req)
        end
        tail = { at, levels }
        st.projection = tail
    end
    return tail[1], tail[2]
end

local function _enqueue(st, e)
    if #st.queue == 0 then
        st.projection = nil
    end
    insert(st.queue, e)
    local tail = st.projection
    if tail ~= nil then
        st.projection = { _step(tail[1], tail[2], e.plan, e.req), tail[2] }
    end
end

local function _cap_blocked_until(st, plan, req, now, wall)
    local low = nil
    for _, h in ipairs(plan.hard) do
        local i, cap = h[1], h[2]
        local c = cap.counter
        local n = req[i]
        if n ~= 0 and c.end_ ~= nil and c.used + c.reserved + n > cap.limit then
            if low == nil or c.end_ < low then
                low = c.end_
            end
        end
    end
    local at = nil
    if low ~= nil then
        local t = ticks_until(wall, low)
        if t < 0 then
            t = 0
        end
        at = now + t
    end
    if st.ttl ~= nil then
        local first = nil
        for _, r in pairs(st.records) do
            if #r.caps > 0 and r.exp > now and (first == nil or r.exp < first) then
                first = r.exp
            end
        end
        if st.next_exp ~= nil and st.next_exp > now and (first == nil or st.next_exp < first) then
            first = st.next_exp
        end
        if first ~= nil and (at == nil or first < at) then
            at = first
        end
    end
    return at
end

local function _fail(st, e, err)
    e.state, e.error = FAILED, err
    insert(st.woken, e)
    if st.ttl ~= nil and e.id ~= '' then
        st.records[e.id] = Record(REFUSED, st.clock + st.keep, 0, {}, err)
    end
end

local function _fail_certain(st)
    local waiting = {}
    for k, e in ipairs(st.queue) do
        waiting[k] = e
    end
    for _, e in ipairs(waiting) do
        local err = _certain_overrun(e.plan, e.req)
        if err ~= nil then
            unqueue(st, e)
            st.projection = nil
            _fail(st, e, err)
        end
    end
end

local function service(st, now, wall)
    _roll(st, wall)
    local queue = st.queue
    local woken = st.woken
    while #queue > 0 do
        local e = queue[1]
        local plan, req = e.plan, e.req
        local served = false -- Python's ``continue``
        local deadline = nil
        local err = _certain_overrun(plan, req)
        if err ~= nil then
            remove(queue, 1)
            st.projection = nil
            _fail(st, e, err)
            served = true
        elseif _caps_fit(plan, req) then
            local wait = _rate_wait(plan, req, now)
            if wait == 0 then
                remove(queue, 1) -- served: the projection still holds
                e.take = _take(st, plan, req)
                e.state = GRANTED
                if st.ttl ~= nil then
                    _record_grant(st, e.id, plan, req, e.take, UNCLAIMED)
                end
                insert(woken, e)
                served = true
            else
                deadline = now + wait
            end
        elseif e.alive ~= nil and e.alive < now then
            -- its owner stopped looking (a process gone): it leaves
            remove(queue, 1)
            st.projection = nil
            e.state = CLAIMED
            served = true
        else
            deadline = _cap_blocked_until(st, plan, req, now, wall)
        end
        if not served then
            local old = e.deadline
            if deadline ~= old then
                e.deadline = deadline
                if old == nil or (deadline ~= nil and deadline < old) then
                    insert(woken, e)
                end
            end
            break
        end
    end
end

-- acquire: returns "granted", take | "queued", entry | "refused", error | "none"
local function acquire(st, plan, req, now, wall, timeout, wait, lease_id)
    if now < st.clock then
        now = st.clock
    end
    st.clock = now
    local queue = st.queue
    if #queue > 0 then
        if wall < st.wall then
            wall = st.wall
        end
        st.wall = wall
        service(st, now, wall)
    end
    local fits = true
    if #plan.caps > 0 then
        if plan.calendar then
            if wall < st.wall then
                wall = st.wall
            end
            st.wall = wall
            if wall >= st.next_roll then
                _roll(st, wall)
            end
        end
        if #plan.hard > 0 then
            local err = _certain_overrun(plan, req)
            if err ~= nil then
                return 'refused', err
            end
            fits = _caps_fit(plan, req)
        end
        if #plan.shadow > 0 then
            _shadow(st, plan, req, false)
        end
    end
    if fits and #queue == 0 then
        local take = take_now(st, plan, req, now)
        if take ~= 0 then
            if #plan.caps > 0 and st.ttl ~= nil then
                _record_grant(st, lease_id, plan, req, take, ACTIVE)
            end
            return 'granted', take
        end
    end
    if not wait then
        return 'none'
    end
    if timeout ~= nil then
        local foreseen = nil
        if #queue == 0 or _caps_fit(queue[1].plan, queue[1].req) then
            if _caps_fit(plan, req) then
                local at, levels = _tail(st, now)
                local copy = {}
                for b, lt in pairs(levels) do
                    copy[b] = lt
                end
                foreseen = _step(at, copy, plan, req) - now
            end
        end
        if timeout == 0 or (foreseen ~= nil and foreseen > timeout) then
            return 'refused', { 't', nn(foreseen) }
        end
    end
    local e = Entry()
    e.id = lease_id
    e.plan = plan
    e.req = req
    if timeout ~= nil then
        e.timeout_at = now + timeout
    end
    if st.live ~= nil then
        e.alive = now + st.live
    end
    _enqueue(st, e)
    if #queue == 1 then -- the new head: ``service`` sets its deadline
        if wall < st.wall then
            wall = st.wall
        end
        st.wall = wall
        service(st, now, wall)
        if #st.woken > 0 and st.woken[#st.woken] == e then
            st.woken[#st.woken] = nil -- it learns its deadline from the answer
        end
    end
    return 'queued', e
end

local function _clock(st, now, wall)
    if now < st.clock then
        now = st.clock
    end
    if wall < st.wall then
        wall = st.wall
    end
    st.clock, st.wall = now, wall
    return now, wall
end

-- _decide._leave
local function core_leave(st, e, now, wall)
    local was_head = st.queue[1] == e
    unqueue(st, e)
    st.projection = nil
    e.state = CLAIMED
    if was_head then
        service(st, now, wall)
    end
end

local function poll(st, e, now, wall)
    now, wall = _clock(st, now, wall)
    service(st, now, wall)
    if e.state == GRANTED then
        e.state = CLAIMED
        if st.ttl ~= nil then
            local rec = st.records[e.id]
            if rec ~= nil and rec.status == UNCLAIMED then
                rec.status = ACTIVE
            end
        end
        return nil
    end
    if e.state ~= WAITING then
        return nil
    end
    if e.alive ~= nil and st.live ~= nil then
        e.alive = now + st.live
    end
    local timeout_at = e.timeout_at
    if timeout_at ~= nil and now >= timeout_at then
        core_leave(st, e, now, wall)
        e.error = { 't', NULL }
        e.state = FAILED
        return nil
    end
    local deadline = e.deadline
    if deadline ~= nil and deadline <= now then
        e.deadline = nil
        deadline = nil
    end
    if timeout_at ~= nil and (deadline == nil or timeout_at < deadline) then
        deadline = timeout_at
    end
    return deadline
end

local function abort(st, e, now, wall)
    now, wall = _clock(st, now, wall)
    if e.state == WAITING then
        if queued(st, e) then
            core_leave(st, e, now, wall)
        end
        return
    end
    if e.state == GRANTED then -- granted on its behalf, never claimed
        e.state = CLAIMED
        local plan = e.plan
        local held = true
        local caps = {}
        for _, cs in ipairs(plan.caps) do
            insert(caps, { cs[2].counter, e.req[cs[1]] })
        end
        if st.ttl ~= nil then
            local rec = st.records[e.id]
            st.records[e.id] = nil
            held = rec ~= nil and (rec.status == UNCLAIMED or rec.status == ACTIVE)
            caps = {}
            if rec ~= nil then
                caps = rec.caps
            end
        end
        if held then
            st.projection = nil
            for _, r in ipairs(plan.rates) do
                local i, b = r[1], r[2]
                if e.req[i] ~= 0 then
                    bucket_refund(b, e.take, e.req[i] * b.per, now)
                end
            end
            for _, cn in ipairs(caps) do
                cn[1].reserved = cn[1].reserved - cn[2]
            end
        end
        service(st, now, wall)
    end
end

local function _inexact(exact, plan, amounts, est, now)
    for _, r in ipairs(plan.rates) do
        local i, b = r[1], r[2]
        local more = amounts[i]
        if est ~= nil then
            more = more - est[i]
        end
        -- a bounded debt is exact whatever the amount: it stops at -debt
        if b.debt == nil and more > 0
            and refill(b.level, b.last, now, b.rate, b.cap) - more * b.per < -exact then
            return { 'inexact', 'slot ' .. fmt(i - 1) .. ": the rate's debt" }
        end
    end
    for _, cs in ipairs(plan.caps) do
        local i, c = cs[1], cs[2].counter
        if amounts[i] ~= 0 and c.used + amounts[i] > exact then
            return { 'inexact', 'slot ' .. fmt(i - 1) .. ": the cap's usage" }
        end
    end
    return nil
end

-- settle: {"crossings", [...]} | {"none"} (settled already) | {"inexact", what}
local function settle(st, plan, take, est, actual, now, wall, lease_id)
    now, wall = _clock(st, now, wall)
    _roll(st, wall)
    -- the cap reservations it still holds: on a shared store, what its
    -- record holds (none once reclaimed), whatever plan the settle comes from
    local held = {}
    for _, cs in ipairs(plan.caps) do
        if est[cs[1]] ~= 0 then
            insert(held, { cs[2].counter, est[cs[1]] })
        end
    end
    if st.ttl ~= nil then
        local rec = nil
        if lease_id ~= '' then
            rec = st.records[lease_id]
        end
        if rec ~= nil and rec.status == SETTLED then
            return { 'none' }
        end
        held = {}
        if rec ~= nil and (rec.status == ACTIVE or rec.status == UNCLAIMED) then
            held = rec.caps
        end
    end
    if actual ~= nil and st.exact ~= nil then
        local bad = _inexact(st.exact, plan, actual, est, now)
        if bad ~= nil then
            return bad
        end
    end
    local crossings = {}
    if actual ~= nil then
        for _, r in ipairs(plan.rates) do
            local i, b = r[1], r[2]
            local delta = actual[i] - est[i]
            if delta ~= 0 then
                st.projection = nil
                if delta < 0 then
                    bucket_refund(b, take, -delta * b.per, now)
                else
                    st.take = st.take + 1
                    bucket_charge(b, delta * b.per, now, st.take)
                end
            end
        end
    end
    for _, cn in ipairs(held) do
        cn[1].reserved = cn[1].reserved - cn[2]
    end
    for _, cs in ipairs(plan.caps) do
        local i, c = cs[1], cs[2].counter
        if actual ~= nil and actual[i] ~= 0 then
            local before = counter_add(c, actual[i])
            insert(crossings, { i - 1, before, c.used, c.period, nn(c.end_) })
        end
    end
    if st.ttl ~= nil and lease_id ~= '' then
        st.records[lease_id] = Record(SETTLED, now + st.keep, take, {})
    end
    if #st.queue > 0 then
        if actual ~= nil and #plan.hard > 0 then
            _fail_certain(st)
        end
        service(st, now, wall)
    end
    return { 'crossings', crossings }
end

-- record: {"crossings", [...]} | an Exceeded | {"inexact", what}
local function record(st, plan, req, now, wall)
    now, wall = _clock(st, now, wall)
    _roll(st, wall)
    if st.exact ~= nil then
        local bad = _inexact(st.exact, plan, req, nil, now)
        if bad ~= nil then
            return bad
        end
    end
    for _, h in ipairs(plan.hard) do
        local i, cap = h[1], h[2]
        local n = req[i]
        local c = cap.counter
        if n ~= 0 and c.used + c.reserved + n > cap.limit then
            return _exceeded(i, cap)
        end
    end
    if #plan.shadow > 0 then
        _shadow(st, plan, req, true)
    end
    for _, r in ipairs(plan.rates) do
        local i, b = r[1], r[2]
        if req[i] ~= 0 then
            st.projection = nil
            st.take = st.take + 1
            bucket_charge(b, req[i] * b.per, now, st.take)
        end
    end
    local crossings = {}
    for _, cs in ipairs(plan.caps) do
        local i, c = cs[1], cs[2].counter
        if req[i] ~= 0 then
            local before = counter_add(c, req[i])
            insert(crossings, { i - 1, before, c.used, c.period, nn(c.end_) })
        end
    end
    if #st.queue > 0 then
        _fail_certain(st)
        service(st, now, wall)
    end
    return { 'crossings', crossings }
end

local function extend(st, lease_id, ttl, now)
    local rec = st.records[lease_id]
    if rec == nil or not (rec.status == ACTIVE or rec.status == UNCLAIMED) then
        return nil
    end
    if now + ttl > rec.exp then
        rec.exp = now + ttl
    end
    return rec.exp - now
end

local function lower(st, b, top, now)
    if now < st.clock then
        now = st.clock
    end
    st.clock = now
    if bucket_lower(b, top, now) then
        st.projection = nil
    end
end

local function reset(st, plan, now, wall)
    now, wall = _clock(st, now, wall)
    _roll(st, wall)
    for _, cs in ipairs(plan.caps) do
        cs[2].counter.used = 0
    end
    if #plan.rates > 0 then
        st.projection = nil
        st.take = st.take + 1
        for _, r in ipairs(plan.rates) do
            bucket_fill(r[2], now, st.take)
        end
    end
    if #st.queue > 0 then
        service(st, now, wall)
    end
end

local function snapshot(st, plan, now, wall)
    now, wall = _clock(st, now, wall)
    _roll(st, wall)
    local out = {}
    for _, s in ipairs(plan.slots) do
        if s.counter == nil then
            insert(out, { bucket_now(s, now), 0, 0, '', NULL })
        else
            local c = s.counter
            insert(out, { 0, c.used, c.reserved, c.period, nn(c.end_) })
        end
    end
    return { 'snapshot', out, #st.queue }
end

-- stores/_ops.py ---------------------------------------------------------------

local function _entry_result(e)
    if (e.state == GRANTED or e.state == CLAIMED) and e.take ~= 0 then
        return { 'granted', e.take }
    end
    if e.state == FAILED then
        return e.error
    end
    if e.state == WAITING then
        return { 'queued', nn(e.deadline) }
    end
    return { 'gone' }
end

local function _poll(st, key, now)
    for _, e in ipairs(st.queue) do
        if e.id == key then
            local deadline = poll(st, e, now, now)
            if e.state == WAITING then
                return { 'queued', nn(deadline) }
            end
            return _entry_result(e)
        end
    end
    local rec = st.records[key]
    if rec == nil then
        return { 'gone' }
    end
    if rec.status == UNCLAIMED then
        rec.status = ACTIVE -- claimed: its owner proceeds
        return { 'granted', rec.take }
    end
    if rec.status == REFUSED and rec.error ~= nil then
        st.records[key] = nil
        return rec.error
    end
    if rec.status == ACTIVE or rec.status == SETTLED or rec.status == EXPIRED then
        return { 'granted', rec.take } -- claimed already (a retry)
    end
    return { 'gone' }
end

local function _leave(st, plan, key, req, now)
    for _, e in ipairs(st.queue) do
        if e.id == key then
            abort(st, e, now, now)
            return
        end
    end
    local rec = st.records[key]
    if rec ~= nil and (rec.status == UNCLAIMED or rec.status == ACTIVE) then
        -- granted on its behalf, and its owner left before it proceeded
        local e = Entry()
        e.id, e.plan, e.req, e.take, e.state = key, plan, req, rec.take, GRANTED
        abort(st, e, now, now)
    end
end

local function run(st, plan, ops, now)
    now = run_clock(st, now)
    reclaim(st, now)
    local out = {}
    for _, op in ipairs(ops) do
        local kind = op[1]
        local result
        if kind == 'acquire' then
            local what, got = acquire(st, plan, op[3], now, now, nul(op[4]), op[5] ~= 0, op[2])
            if what == 'queued' then
                result = { 'queued', nn(got.deadline) }
            elseif what == 'granted' then
                result = { 'granted', got }
            elseif what == 'refused' then
                result = got
            else
                result = { 'none' }
            end
        elseif kind == 'poll' then
            result = _poll(st, op[2], now)
        elseif kind == 'leave' then
            _leave(st, plan, op[2], op[3], now)
            result = { 'none' }
        elseif kind == 'settle' then
            result = settle(st, plan, op[3], op[4], nul(op[5]), now, now, op[2])
        elseif kind == 'record' then
            result = record(st, plan, op[2], now, now)
        elseif kind == 'snapshot' then
            result = snapshot(st, plan, now, now)
        elseif kind == 'reset' then
            reset(st, plan, now, now)
            result = { 'none' }
        elseif kind == 'lower' then
            local b = plan.slots[op[2] + 1]
            assert(b ~= nil and b.counter == nil, 'ratebudget: lower needs a rate slot')
            lower(st, b, op[3] * b.per, now)
            if #st.queue > 0 then
                service(st, now, now)
            end
            result = { 'none' }
        elseif kind == 'extend' then
            local ttl = nul(op[3])
            if ttl == nil then
                ttl = st.ttl
            end
            local got = extend(st, op[2], ttl or 0, now)
            result = { 'bool', got ~= nil and 1 or 0 }
        else
            error('ratebudget: unknown store operation ' .. tostring(kind))
        end
        if result == nil then -- a hole would shift every later answer
            error('ratebudget: store operation ' .. tostring(kind) .. ' gave no result')
        end
        out[#out + 1] = result
    end
    local woken = {}
    for _, e in ipairs(st.woken) do
        local got = _entry_result(e)
        if e.id ~= '' and got[1] ~= 'gone' then
            insert(woken, { e.id, got })
        end
    end
    st.woken = {}
    return out, woken
end

-- stores/_state.py: the document in, the document out ------------------------------

-- the plan's slots over ``st`` (PlanSpec.bind); ``lv``: the caller's plan and
-- windows (ARGV[1] itself, or a level of a path)
local function bind(st, now, lv)
    local slots = {}
    local windows = lv.windows
    for _, s in ipairs(lv.plan) do
        if s[1] == 'r' then
            insert(slots, st_bucket(st, s[2], s[3], s[4], s[5], now, nul(s[6])))
        else
            local window = nil
            if s[5] ~= NULL then
                window = windows[s[2]] or {}
            end
            insert(slots, CapSlot(st_counter(st, s[2], window), s[3], s[4]))
        end
    end
    set_roll(st)
    return Plan(slots)
end

-- another limiter's plan, from its document (_state._bind)
local function _bind(pdoc, st)
    local slots = {}
    for _, s in ipairs(pdoc) do
        if s[1] == 'r' then
            local b = st.buckets[s[2]]
            assert(b ~= nil, 'ratebudget: a plan names an unknown rate')
            insert(slots, b)
        else
            local counter = st.counters[s[2]]
            if counter == nil then
                counter = Counter(s[2], nil)
                st.counters[s[2]] = counter
            end
            insert(slots, CapSlot(counter, s[3], s[4]))
        end
    end
    return Plan(slots)
end

local function load_record(data, st)
    local caps = {}
    for _, kn in ipairs(data[4]) do
        local c = st.counters[kn[1]]
        if c == nil then
            c = Counter(kn[1], nil)
            st.counters[kn[1]] = c
        end
        insert(caps, { c, kn[2] })
    end
    local err = nul(data[5])
    if err ~= nil and #err == 0 then
        err = nil
    end
    return Record(data[1], data[2], data[3], caps, err)
end

local function dump_record(rec)
    local caps = {}
    for _, cn in ipairs(rec.caps) do
        insert(caps, { cn[1].key, cn[2] })
    end
    return { rec.status, rec.exp, rec.take, caps, nn(rec.error) }
end

-- _state.load: fill the empty ``st``; the caller's plan (``lv``: as for bind)
local function load(doc, records, st, now, lv)
    local windows = lv.windows
    if doc ~= nil then
        st.clock, st.wall, st.take = doc.clock, doc.wall, doc.take
        for key, row in pairs(doc.b) do
            local b = Bucket(key, row[1], row[2], row[3], row[4], row[5])
            b.full, b.peaks = row[6], row[7]
            st.buckets[key] = b
        end
        for key, row in pairs(doc.c) do
            local window = nil
            if row[5] ~= NULL then
                window = windows[key] or {}
            end
            local c = Counter(key, window)
            c.period, c.end_, c.used, c.reserved = row[1], nul(row[2]), row[3], row[4]
            -- the alert latches (a document written before them has none)
            c.peak = row[7] or c.used
            c.noted = row[8] == 1
            st.counters[key] = c
        end
    end
    -- the plan's calendar caps roll into the windows the caller sent
    for _, s in ipairs(lv.plan) do
        if s[1] == 'c' and s[5] ~= NULL then
            local c = st.counters[s[2]]
            if c == nil then
                st.counters[s[2]] = Counter(s[2], windows[s[2]] or {})
            elseif c.window == nil then
                c.window = windows[s[2]] or {}
            end
        end
    end
    local plan = bind(st, now, lv)
    plan.pid, plan.pdoc = lv.pid, lv.pdoc
    if doc ~= nil then
        local plans = { [lv.pid] = plan }
        for _, q in ipairs(doc.q) do
            local pid = q[2]
            local p = plans[pid]
            if p == nil then
                p = _bind(doc.p[pid], st)
                p.pid, p.pdoc = pid, doc.p[pid]
                plans[pid] = p
            end
            local e = Entry()
            e.id, e.plan, e.req = q[1], p, q[3]
            e.deadline, e.timeout_at, e.alive = nul(q[4]), nul(q[5]), nul(q[6])
            insert(st.queue, e)
        end
    end
    for key, data in pairs(records) do
        st.records[key] = load_record(data, st)
    end
    set_roll(st)
    return plan
end

-- _state.dump (``specs``: each cap key's {per, tz}, as _state.cap_specs)
local function dump(st, specs)
    local plans = object({})
    local queue = {}
    for _, e in ipairs(st.queue) do
        local p = e.plan
        if plans[p.pid] == nil then
            plans[p.pid] = p.pdoc
        end
        insert(queue, { e.id, p.pid, e.req, nn(e.deadline), nn(e.timeout_at), nn(e.alive) })
    end
    local buckets = object({})
    for k, b in pairs(st.buckets) do
        buckets[k] = { b.rate, b.per, b.cap, b.level, b.last, b.full, b.peaks }
    end
    local counters = object({})
    for k, c in pairs(st.counters) do
        local spec = specs[k] or { NULL, 'UTC' }
        counters[k] = {
            c.period, nn(c.end_), c.used, c.reserved, spec[1], spec[2], c.peak,
            c.noted and 1 or 0,
        }
    end
    return object({
        clock = st.clock, wall = st.wall, take = st.take,
        b = buckets, c = counters, p = plans, q = queue,
    })
end

-- _path.py and stores/_path_ops.py: a batch down a path of scopes ---------------
-- (levels: {st, plan, a}, nearest first; ``a``: the offset of its slots in the
-- path's; reqs split by level; takes: each level's take, an array)

local function split(req, levels)
    local out = {}
    for k, lv in ipairs(levels) do
        out[k] = { unpack(req, lv.a + 1, lv.a + #lv.plan.slots) }
    end
    return out
end

local function offset(err, levels, k) -- a level's refusal, numbered over the path
    if err ~= nil and err[1] == 'x' then
        return { 'x', err[2] + levels[k].a, err[3], err[4], err[5], err[6] }
    end
    return err
end

-- _path._give_back: the takes of levels 1 .. below go back
local function give_back(levels, reqs, takes, below, key, now)
    for k = below, 1, -1 do
        local e = Entry()
        e.id, e.plan, e.req, e.take, e.state = key, levels[k].plan, reqs[k], takes[k], GRANTED
        abort(levels[k].st, e, now, now)
    end
end

-- _path._advance, from level ``at`` (1-based; granted there: ``take``): on up as far
-- as the levels serve it at once. {'granted', takes} | {'path_queued', ...} |
-- a refusal (everything given back)
local function advance(levels, reqs, takes, at, take, timeout_at, key, now)
    while true do
        insert(takes, take)
        at = at + 1
        if at > #levels then
            return { 'granted', takes }
        end
        local lv = levels[at]
        local left = nil
        if timeout_at ~= nil then
            left = math.max(0, timeout_at - now)
        end
        local what, got = acquire(lv.st, lv.plan, reqs[at], now, now, left, true, key)
        if what == 'granted' then
            take = got
        elseif what == 'queued' then
            local st = lv.st
            if #st.woken > 0 and st.woken[#st.woken] == got then
                remove(st.woken) -- it learns from this answer
            end
            return { 'path_queued', nn(got.deadline), at - 1, takes, nn(timeout_at) }
        else
            give_back(levels, reqs, takes, at - 1, key, now)
            return offset(got, levels, at)
        end
    end
end

-- _path.acquire
local function path_acquire(levels, reqs, now, timeout, wait, key)
    for k, lv in ipairs(levels) do
        if #lv.plan.hard > 0 then
            local _, wall = _clock(lv.st, now, now)
            _roll(lv.st, wall)
            local err = _certain_overrun(lv.plan, reqs[k])
            if err ~= nil then
                return offset(err, levels, k)
            end
        end
    end
    local takes = {}
    for k, lv in ipairs(levels) do
        local what, got = acquire(lv.st, lv.plan, reqs[k], now, now, timeout, wait, key)
        if what == 'granted' then
            insert(takes, got)
        elseif what == 'queued' then
            local timeout_at = nil
            if timeout ~= nil then
                timeout_at = now + timeout
            end
            return { 'path_queued', nn(got.deadline), k - 1, takes, nn(timeout_at) }
        else
            give_back(levels, reqs, takes, k - 1, key, now)
            if what == 'refused' then
                return offset(got, levels, k)
            end
            return { 'none' }
        end
    end
    return { 'granted', takes }
end

-- _path_ops._poll: the owner of a waiter at level ``at`` (0-based) looks
local function path_poll(levels, reqs, key, at, below, timeout_at, now)
    local k = at + 1
    local got = _poll(levels[k].st, key, now)
    if got[1] == 'queued' then
        return { 'path_queued', got[2], at, below, nn(timeout_at) }
    end
    if got[1] == 'granted' then
        return advance(levels, reqs, below, k, got[2], timeout_at, key, now)
    end
    if got[1] == 'x' or got[1] == 't' then
        give_back(levels, reqs, below, k - 1, key, now)
        return offset(got, levels, k)
    end
    return got -- gone
end

-- _path_ops._leave
local function path_leave(levels, reqs, key, at, takes, now)
    local below = at
    if at < #levels then
        local lv = levels[at + 1]
        _leave(lv.st, lv.plan, key, reqs[at + 1], now)
    else
        below = #levels -- granted at every level, never claimed
    end
    give_back(levels, reqs, takes, below, key, now)
end

local function crossings_of(per_level, levels) -- numbered over the path
    local out = {}
    for k, got in ipairs(per_level) do
        for _, c in ipairs(got) do
            insert(out, { c[1] + levels[k].a, c[2], c[3], c[4], c[5] })
        end
    end
    return out
end

-- _path.settle: {"crossings", [...]} | {"none"} | {"inexact", what}
local function path_settle(levels, takes, ests, actuals, now, key)
    if actuals ~= nil then
        for k, lv in ipairs(levels) do
            if lv.st.exact ~= nil then
                local bad = _inexact(lv.st.exact, lv.plan, actuals[k], ests[k], now)
                if bad ~= nil then
                    return bad
                end
            end
        end
    end
    local per_level, settled, any = {}, false, false
    for k, lv in ipairs(levels) do
        local actual = nil
        if actuals ~= nil then
            actual = actuals[k]
        end
        local got = settle(lv.st, lv.plan, takes[k], ests[k], actual, now, now, key)
        if got[1] == 'none' then
            settled = true
            per_level[k] = {}
        else
            per_level[k] = got[2]
            if #got[2] > 0 then
                any = true
            end
        end
    end
    if settled and not any then
        return { 'none' }
    end
    return { 'crossings', crossings_of(per_level, levels) }
end

-- _path.record: {"crossings", [...]} | an Exceeded | {"inexact", what}
local function path_record(levels, reqs, now)
    for k, lv in ipairs(levels) do
        if lv.st.exact ~= nil then
            local bad = _inexact(lv.st.exact, lv.plan, reqs[k], nil, now)
            if bad ~= nil then
                return bad
            end
        end
    end
    for k, lv in ipairs(levels) do
        local _, wall = _clock(lv.st, now, now)
        _roll(lv.st, wall)
        for _, h in ipairs(lv.plan.hard) do
            local i, cap = h[1], h[2]
            local n = reqs[k][i]
            local c = cap.counter
            if n ~= 0 and c.used + c.reserved + n > cap.limit then
                return offset(_exceeded(i, cap), levels, k)
            end
        end
    end
    local per_level = {}
    for k, lv in ipairs(levels) do
        per_level[k] = record(lv.st, lv.plan, reqs[k], now, now)[2]
    end
    return { 'crossings', crossings_of(per_level, levels) }
end

-- _path_ops.run_path
local function run_path(levels, ops, now)
    for _, lv in ipairs(levels) do
        if now < lv.st.clock then
            now = lv.st.clock
        end
    end
    for _, lv in ipairs(levels) do
        run_clock(lv.st, now)
        reclaim(lv.st, now)
    end
    local out = {}
    local n = #levels
    for _, op in ipairs(ops) do
        local kind = op[1]
        local result
        if kind == 'acquire' then
            result = path_acquire(levels, split(op[3], levels), now, nul(op[4]), op[5] ~= 0, op[2])
        elseif kind == 'path_poll' then
            result = path_poll(levels, split(op[3], levels), op[2], op[4], op[5], nul(op[6]), now)
        elseif kind == 'path_leave' then
            path_leave(levels, split(op[3], levels), op[2], op[4], op[5], now)
            result = { 'none' }
        elseif kind == 'settle' then
            local actuals = nil
            if nul(op[5]) ~= nil then
                actuals = split(op[5], levels)
            end
            result = path_settle(levels, op[3], split(op[4], levels), actuals, now, op[2])
        elseif kind == 'record' then
            result = path_record(levels, split(op[2], levels), now)
        elseif kind == 'snapshot' then
            result = snapshot(levels[1].st, levels[1].plan, now, now)
        elseif kind == 'reset' then
            reset(levels[1].st, levels[1].plan, now, now)
            result = { 'none' }
        elseif kind == 'lower' then
            local lv = nil
            for _, l in ipairs(levels) do
                if op[2] >= l.a and op[2] < l.a + #l.plan.slots then
                    lv = l
                end
            end
            assert(lv ~= nil, 'ratebudget: lower names no slot of the path')
            local b = lv.plan.slots[op[2] - lv.a + 1]
            assert(b ~= nil and b.counter == nil, 'ratebudget: lower needs a rate slot')
            lower(lv.st, b, op[3] * b.per, now)
            if #lv.st.queue > 0 then
                service(lv.st, now, now)
            end
            result = { 'none' }
        elseif kind == 'extend' then
            local kept = 0
            for _, lv in ipairs(levels) do
                local ttl = nul(op[3])
                if ttl == nil then
                    ttl = lv.st.ttl
                end
                if extend(lv.st, op[2], ttl or 0, now) ~= nil then
                    kept = 1
                end
            end
            result = { 'bool', kept }
        else
            error('ratebudget: unknown store operation down a path ' .. tostring(kind))
        end
        if result == nil then
            error('ratebudget: store operation ' .. tostring(kind) .. ' gave no result')
        end
        out[#out + 1] = result
    end
    local woken, shadowed = {}, {}
    for _, lv in ipairs(levels) do
        for _, e in ipairs(lv.st.woken) do
            local got = _entry_result(e)
            if e.id ~= '' and got[1] ~= 'gone' then
                insert(woken, { e.id, got })
            end
        end
        lv.st.woken = {}
        for _, x in ipairs(lv.st.shadowed) do
            insert(shadowed, { x[1] + lv.a, x[2], x[3], x[4], x[5], x[6], x[7] })
        end
        lv.st.shadowed = {}
    end
    return out, woken, shadowed
end

-- run_document, and the writes of RedisStore ---------------------------------------

-- the records a batch may read of one state: expired ones, and those its ops name
local function records_of(R, X, clock, ops)
    local want, wanted = {}, {}
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', X, '-inf', fmt(clock))) do
        if not wanted[id] then
            wanted[id] = true
            insert(want, id)
        end
    end
    for _, op in ipairs(ops) do
        local kind = op[1]
        if kind == 'poll' or kind == 'leave' or kind == 'settle' or kind == 'extend'
            or kind == 'path_poll' or kind == 'path_leave' then
            if not wanted[op[2]] then
                wanted[op[2]] = true
                insert(want, op[2])
            end
        end
    end
    local records = {}
    for first = 1, #want, 1000 do
        local last = math.min(first + 999, #want)
        local got = redis.call('HMGET', R, unpack(want, first, last))
        for k = first, last do
            local data = got[k - first + 1]
            if data then
                records[want[k]] = cjson.decode(data)
            end
        end
    end
    return records
end

-- one state, loaded: {st, plan, doc, records, after} (``lv``: its plan's arguments)
local function load_state(S, R, X, lv, ops, now, doc_in)
    local d = doc_in
    if d == false then
        local text = redis.call('GET', S)
        d = nil
        if text then
            d = cjson.decode(text)
        end
    end
    local clock = now
    if d ~= nil and d.clock > now then
        clock = d.clock
    end
    local records = records_of(R, X, clock, ops)
    local st = State(args.ttl, args.keep, args.ttl)
    st.exact = EXACT
    -- the first expiry of the records not loaded: a cap-blocked head looks again then
    local after = redis.call('ZRANGEBYSCORE', X, '(' .. fmt(clock), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if #after > 0 then
        st.next_exp = tonumber(after[2])
    end
    local plan = load(d, records, st, now, lv)
    return { S = S, R = R, X = X, st = st, plan = plan, doc = d, records = records,
        after = after, lv = lv }
end

-- what a state's writes will be, all encoded (nothing written yet)
local function writes_of(w)
    local st, d = w.st, w.doc
    local specs = {} -- _state.cap_specs
    if d ~= nil then
        for key, row in pairs(d.c) do
            specs[key] = { row[5], row[6] }
        end
    end
    for _, s in ipairs(w.lv.plan) do
        if s[1] == 'c' then
            specs[s[2]] = { s[5], s[6] }
        end
    end
    w.doc_out = encode(dump(st, specs))
    local fields, scores = {}, {}
    for key, rec in pairs(st.records) do
        insert(fields, key)
        insert(fields, encode(dump_record(rec)))
        insert(scores, fmt(rec.exp))
        insert(scores, key)
    end
    local gone = {}
    for key in pairs(w.records) do
        if st.records[key] == nil then
            insert(gone, key)
        end
    end
    w.fields, w.scores, w.gone = fields, scores, gone
end

local function write(w)
    local st = w.st
    local idle = args.idle + fdiv(args.ttl, 1000)
    -- the state outlives idleness while a cap still counts something: a period's
    -- usage for ``args.keep_usage`` ms after its last change, a lifetime's forever
    local keep_state = idle
    for _, c in pairs(st.counters) do
        if c.used ~= 0 or c.reserved ~= 0 then
            if c.window == nil and c.period == '' then
                keep_state = -1
                break
            end
            if args.keep_usage > keep_state then
                keep_state = args.keep_usage
            end
        end
    end
    if keep_state < 0 then
        redis.call('SET', w.S, w.doc_out)
    else
        redis.call('SET', w.S, w.doc_out, 'PX', fmt(keep_state))
    end
    local gone, fields, scores = w.gone, w.fields, w.scores
    for first = 1, #gone, 1000 do
        local last = math.min(first + 999, #gone)
        redis.call('HDEL', w.R, unpack(gone, first, last))
        redis.call('ZREM', w.X, unpack(gone, first, last))
    end
    for first = 1, #fields, 1000 do
        local last = math.min(first + 999, #fields)
        redis.call('HSET', w.R, unpack(fields, first, last))
        redis.call('ZADD', w.X, unpack(scores, first, last))
    end
    -- the lease keys, while they hold records (those not loaded lie after ``clock``)
    if #w.after > 0 or next(st.records) ~= nil then
        redis.call('PEXPIRE', w.R, fmt(idle))
        redis.call('PEXPIRE', w.X, fmt(idle))
    end
end

local states, results, woken, shadowed
if args.path == nil then
    local w = load_state(S, R, X, args, args.ops, now, doc)
    states = { w }
    results, woken = run(w.st, w.plan, args.ops, now)
    shadowed = w.st.shadowed
else
    -- a scope's path: KEYS holds each level's three keys, nearest first
    states = {}
    local levels = {}
    local a = 0
    for k, lv in ipairs(args.path) do
        local base = 3 * (k - 1)
        local d = false
        if k == 1 then
            d = doc -- read already
        end
        local w = load_state(KEYS[base + 1], KEYS[base + 2], KEYS[base + 3], lv, args.ops, now, d)
        states[k] = w
        levels[k] = { st = w.st, plan = w.plan, a = a }
        a = a + #lv.plan
    end
    results, woken, shadowed = run_path(levels, args.ops, now)
end

-- everything is encoded before anything is written
for _, w in ipairs(states) do
    writes_of(w)
end
local woken_keys = {}
for _, w in ipairs(woken) do
    insert(woken_keys, w[1])
end
local reply = { results = results, now = states[1].st.clock, woken = woken }
if #shadowed > 0 then
    reply.shadowed = shadowed
end
local answer = encode(object(reply))
for _, w in ipairs(states) do
    write(w)
end
if #woken_keys > 0 then
    -- the root's channel: waiters of a tree register under its root's name
    -- (on a Redis Cluster that has it, sharded: SPUBLISH, heard on the
    -- slot's own shard; ARGV[1].shard says so)
    local root = states[#states].S
    redis.call(args.shard and 'SPUBLISH' or 'PUBLISH',
        string.sub(root, 1, -3) .. ':wake', encode(woken_keys))
end
-- the ledger's rows (RedisStore.books): of each settle or record that counted
-- and carries one, on the root's stream (args.book, the last key), stamped
-- with the store's time; a limiter with the ledger copies them into it
if args.book ~= nil then
    local at = fmt(states[1].st.clock)
    for i, op in ipairs(args.ops) do
        local kind, book = op[1], nil
        if kind == 'settle' then
            book = op[6]
        elseif kind == 'record' then
            book = op[3]
        end
        if book ~= nil and book ~= NULL and results[i][1] == 'crossings' then
            redis.call('XADD', args.book, '*', 'at', at, 'row', book)
        end
    end
end
-- the leases this batch found expired: a row each (``expired``, $0) on the
-- tree's stream, if a ledger reads it (the stream exists: a limiter with
-- a ledger wrote there); a lease down a path is one row, its scope's
local stream = args.book
if stream == nil then -- the root's state key is {root}:s (the last level's)
    stream = string.sub(states[#states].S, 1, -3) .. ':ledger'
end
local expired, seen = {}, {}
for _, w in ipairs(states) do
    for key, rec in pairs(w.records) do
        local got = w.st.records[key]
        if (rec[1] == ACTIVE or rec[1] == UNCLAIMED) and got ~= nil
            and got.status == EXPIRED and not seen[key] then
            seen[key] = true
            insert(expired, key)
        end
    end
end
if #expired > 0 and redis.call('EXISTS', stream) == 1 then
    -- (ids and scope names need no escaping: hex digits, and a name's
    -- letters, digits and - _ . : / @)
    local scope = string.gsub(string.sub(states[1].S, 1, -3), '[{}]', '')
    local at = fmt(states[1].st.clock)
    for _, key in ipairs(expired) do
        redis.call('XADD', stream, '*', 'at', at, 'row',
            '["' .. key .. '","' .. scope .. '","{}","expired",[]]')
    end
end
return answer
