--[[
ratebudget: one batch of store operations, atomically, in one script call.

A line-by-line mirror of ``stores/_core.py`` (``run`` and its helpers keep
their names here); ``tests/test_store_vectors.py`` replays the same vectors
through both, and through the SQLite store. Change them together.

Keys (every key of limiter <name> carries the hash tag {<name>}, so they all
live in one Redis Cluster slot):

  KEYS[1]  {<name>}:s  hash: "clock" (µs, never runs backwards), "tail"
                       (the latest proceed time granted: FIFO order),
                       "r:<ratekey>" = "<level>:<last>",
                       "v:<capkey>" = reserved (absent: 0),
                       "blk" = when an acquire last answered "blocked" (µs)
  KEYS[2]  {<name>}:l  hash: lease id -> cmsgpack record {s, at, go, exp,
                       rates = {ratekey: {n, taken, after}}, caps = {capkey: n}}
  KEYS[3]  {<name>}:e  zset: ids of ACTIVE leases, scored by exp
  KEYS[4]  {<name>}:t  zset: ids of settled/expired records (tombstones kept
                       for idempotent retries), scored by exp; records with
                       exp <= clock are deleted at the end of every batch
  KEYS[5+] {<name>}:u:<capkey>|<period>  string: a cap's usage in a period
                       (absent: 0), one key per ARGV.used entry, same order

ARGV[1] is a JSON object:

  plan  Plan.to_json(): ["r", key, rate, per, cap] | ["c", key, limit, hard01]
  ops   the operations, as for _core.run
  keep  µs an expired lease's record is kept
  now   µs, or -1: Redis' TIME
  used  [["<capkey>|<period>", ttl_ms or -1 (never expires)], ...]: KEYS[5+]
  idle  ms the limiter's keys outlive its last write, at least
  wake  µs a "blocked" answer keeps settles publishing {<name>}:wake

Returns one result per op, shaped exactly as _core.run's (strings and
integers, nested arrays; indexes of plan slots 0-based as in Python). The
decisions write nothing (but drop an :e id without a record): every write
comes at the end, so an error (Redis does not roll a script back) leaves
nothing half-written. A settle, reclaim or
reset PUBLISHes {<name>}:wake (payload: now) when an acquire answered
"blocked" less than ARGV.wake ago, for waiters in other processes.

Expiry: KEYS[1..4] get PEXPIRE max(idle, until the last active lease's exp
+ keep, the last record's exp, every bucket of the plan full again) after
each batch; a usage counter gets PEXPIRE ttl_ms when written (-1: none).

Numbers are Lua doubles: the caller guarantees every quantity stays below
2^53, where doubles are exact integers; they are written back with "%.0f"
(tostring keeps only 14 digits) and returned as Lua numbers (Redis replies
with the exact integer).
]]

local ACTIVE, EXPIRED, SETTLED = 1, 2, 3

local S, L, E, T = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local args = cjson.decode(ARGV[1])
local NULL = cjson.null
local floor = math.floor

local function fmt(x)
    return string.format('%.0f', x)
end

-- Python's a // b for integers (b > 0), exact below 2^53
local function fdiv(a, b)
    local q = floor(a / b)
    if q * b > a then
        q = q - 1
    elseif (q + 1) * b <= a then
        q = q + 1
    end
    return q
end

local plan = {}
for i, s in ipairs(args.plan) do
    if s[1] == 'r' then
        plan[i] = { r = true, key = s[2], rate = s[3], per = s[4], cap = s[5] }
    else
        plan[i] = { r = false, key = s[2], limit = s[3], hard = s[4] == 1 }
    end
end

local used_key_of, used_ttl = {}, {}
for i, u in ipairs(args.used) do
    used_key_of[u[1]] = KEYS[4 + i]
    used_ttl[u[1]] = u[2]
end

-- the state: loaded on first use, written back at the end -------------------

local clock = tonumber(redis.call('HGET', S, 'clock')) or 0
local tail = tonumber(redis.call('HGET', S, 'tail')) or 0  -- latest proceed time
local rates, dirty_rates = {}, {}  -- ratekey: {level, last} | false
local used, dirty_used = {}, {}  -- "capkey|period": used
local reserved, dirty_reserved = {}, {}  -- capkey: reserved
local leases, dirty_leases = {}, {}  -- id: record | false
local blocked_at = false  -- an acquire answered "blocked"
local woke = false  -- a settle, reclaim or reset may unblock someone

local function rate_state(key)
    local got = rates[key]
    if got == nil then
        local raw = redis.call('HGET', S, 'r:' .. key)
        if raw then
            local c = string.find(raw, ':', 1, true)
            got = { tonumber(string.sub(raw, 1, c - 1)), tonumber(string.sub(raw, c + 1)) }
        else
            got = false
        end
        rates[key] = got
    end
    return got
end

local function get_used(key)
    local v = used[key]
    if v == nil then
        local k = used_key_of[key]
        if not k then
            error('ratebudget: usage key not passed in ARGV.used: ' .. key)
        end
        v = tonumber(redis.call('GET', k)) or 0
        used[key] = v
    end
    return v
end

local function get_reserved(key)
    local v = reserved[key]
    if v == nil then
        v = tonumber(redis.call('HGET', S, 'v:' .. key)) or 0
        reserved[key] = v
    end
    return v
end

local function get_lease(id)
    local rec = leases[id]
    if rec == nil then
        local raw = redis.call('HGET', L, id)
        if raw then
            rec = cmsgpack.unpack(raw)
        else
            rec = false
        end
        leases[id] = rec
    end
    return rec
end

-- the decisions: _core.py, function by function ---------------------------

local function _refill(level, last, now, rate, cap)
    if now <= last or level >= cap then
        return level
    end
    level = level + rate * (now - last)
    if level > cap then
        return cap
    end
    return level
end

local function _level(p, now)
    local got = rate_state(p.key)
    if not got then
        return p.cap
    end
    return _refill(got[1], got[2], now, p.rate, p.cap)
end

local function _put(p, level, now)
    rates[p.key] = { level, now }
    dirty_rates[p.key] = true
end

local function _used_key(p, period)
    return p.key .. '|' .. period
end

local function _add_reserved(key, n)
    reserved[key] = get_reserved(key) + n
    dirty_reserved[key] = true
end

local function _save_lease(id, rec)
    leases[id] = rec
    dirty_leases[id] = true
end

local function _reclaim(now, keep)
    local expiring = redis.call('ZRANGEBYSCORE', E, '-inf', fmt(now))
    for _, id in ipairs(expiring) do
        local rec = get_lease(id)
        if not rec then
            redis.call('ZREM', E, id)  -- no record: nothing to reclaim
        elseif rec.s == ACTIVE and rec.exp <= now then
            for key, n in pairs(rec.caps) do
                _add_reserved(key, -n)
            end
            rec.s = EXPIRED
            rec.exp = now + keep
            _save_lease(id, rec)
            woke = true
        end
    end
end

local function _acquire(now, id, req, timeout, ttl, periods)
    local rec = get_lease(id)
    if rec then  -- a retry: the first call's answer
        return { 'ok', math.max(0, rec.go - now) }
    end
    -- hard caps: a certain overrun fails, outstanding reservations block
    local blocked = 0
    for i, p in ipairs(plan) do
        local n = req[i]
        if n ~= 0 and not p.r and p.hard then
            local u = get_used(_used_key(p, periods[i]))
            local res = get_reserved(p.key)
            if u + n > p.limit then
                return { 'exceeded', i - 1, u, res }
            end
            if blocked == 0 and u + res + n > p.limit then
                blocked = i
            end
        end
    end
    if blocked > 0 then
        local p = plan[blocked]
        blocked_at = true
        return {
            'blocked',
            blocked - 1,
            get_used(_used_key(p, periods[blocked])),
            get_reserved(p.key),
        }
    end
    local wait = 0
    local levels = {}
    for i, p in ipairs(plan) do
        if p.r and req[i] ~= 0 then
            local level = _level(p, now)
            levels[#levels + 1] = level
            local need = req[i] * p.per
            if level < need then
                local w = -fdiv(level - need, p.rate)
                if w > wait then
                    wait = w
                end
            end
        end
    end
    if now + wait < tail then  -- first come, first served
        wait = tail - now
    end
    if timeout >= 0 and wait > timeout then
        return { 'timeout', wait }
    end
    tail = now + wait
    local rates_rec, caps_rec = {}, {}
    local inline = {}
    local any_cap = false
    local k = 0
    for i, p in ipairs(plan) do
        local n = req[i]
        if n ~= 0 then
            if p.r then
                k = k + 1
                local level = levels[k]
                -- booked as if taken at the proceed time: keep nothing the
                -- bucket's clamp would have dropped by then
                local top = p.cap - p.rate * wait
                if level > top then
                    level = top
                end
                local after = level - n * p.per
                rates_rec[p.key] = { n, levels[k] - after, after }
                inline[#inline + 1] = { p.key, n, levels[k] - after, after }
                _put(p, after, now)
            else
                caps_rec[p.key] = n
                any_cap = true
                _add_reserved(p.key, n)
            end
        end
    end
    if not any_cap then
        -- it reserves no cap, so nothing needs reclaiming: no record; its
        -- holder keeps what a commit or a release needs and sends it along
        return { 'ok', wait, now, inline }
    end
    _save_lease(id, {
        s = ACTIVE,
        at = now,
        go = now + wait,
        exp = now + wait + ttl,
        rates = rates_rec,
        caps = caps_rec,
    })
    return { 'ok', wait }
end

local function _give_back(p, rec, amount, now)
    local after = rec.rates[p.key][3]
    local level = _level(p, now)
    -- grants already scheduled behind this lease counted on the tokens that
    -- refill meanwhile: those are not given back (as golang.org/x/time/rate)
    local backlog = tail - rec.go
    if backlog > 0 then
        amount = amount - p.rate * backlog
    end
    local peak = after + p.rate * (now - rec.at)
    if peak > p.cap then
        peak = p.cap
    end
    local room = p.cap - peak
    if level > peak then  -- other refunds lifted it: never above the burst
        room = p.cap - level
    end
    if room > 0 and amount > 0 then
        if amount < room then
            level = level + amount
        else
            level = level + room
        end
    end
    _put(p, level, now)
end

local function _settle(now, id, actual, ttl, periods, inline)
    local rec = get_lease(id)
    local unrecorded = (not rec) and inline ~= nil and inline ~= NULL
    if unrecorded then  -- a lease that reserved no cap: its holder says what it took
        local rates_rec = {}
        for _, r in ipairs(inline[3]) do
            rates_rec[r[1]] = { r[2], r[3], r[4] }
        end
        rec = { s = ACTIVE, at = inline[1], go = inline[2], rates = rates_rec, caps = {} }
    end
    if not rec or rec.s == SETTLED then
        return { 'gone' }
    end
    local active = rec.s == ACTIVE
    local crossed = {}
    if actual == NULL then
        if active and now < rec.go then
            -- cancelled before its time: every token goes back
            for _, p in ipairs(plan) do
                if p.r and rec.rates[p.key] then
                    _give_back(p, rec, rec.rates[p.key][2], now)
                end
            end
        end
    else
        for i, p in ipairs(plan) do
            if p.r then
                local got = rec.rates[p.key]
                local est = 0
                if got then
                    est = got[1]
                end
                local delta = actual[i] - est
                if delta < 0 and got then
                    _give_back(p, rec, -delta * p.per, now)
                elseif delta > 0 then  -- above the estimate: a debt later callers wait off
                    _put(p, _level(p, now) - delta * p.per, now)
                end
            elseif actual[i] ~= 0 then
                local key = _used_key(p, periods[i])
                local before = get_used(key)
                used[key] = before + actual[i]
                dirty_used[key] = true
                crossed[#crossed + 1] = { i - 1, before, before + actual[i] }
            end
        end
    end
    if active then
        for key, n in pairs(rec.caps) do
            _add_reserved(key, -n)
        end
    end
    if unrecorded then
        return { 'ok', crossed }
    end
    rec.s = SETTLED
    rec.exp = now + ttl
    _save_lease(id, rec)
    woke = true
    return { 'ok', crossed }
end

local function _extend(now, id, ttl)
    local rec = get_lease(id)
    if not rec or rec.s ~= ACTIVE then
        return { 'gone' }
    end
    rec.exp = math.max(rec.exp, now + ttl)
    _save_lease(id, rec)
    return { 'ok', rec.exp - now }
end

local function _record(now, req, periods)
    for i, p in ipairs(plan) do
        local n = req[i]
        if n ~= 0 and not p.r and p.hard then
            local u = get_used(_used_key(p, periods[i]))
            local res = get_reserved(p.key)
            if u + res + n > p.limit then
                return { 'exceeded', i - 1, u, res }
            end
        end
    end
    local crossed = {}
    for i, p in ipairs(plan) do
        local n = req[i]
        if n ~= 0 then
            if p.r then
                _put(p, _level(p, now) - n * p.per, now)
            else
                local key = _used_key(p, periods[i])
                local before = get_used(key)
                used[key] = before + n
                dirty_used[key] = true
                crossed[#crossed + 1] = { i - 1, before, before + n }
            end
        end
    end
    return { 'ok', crossed }
end

local function _snapshot(now, periods)
    local out = {}
    for i, p in ipairs(plan) do
        if p.r then
            out[i] = { _level(p, now) }
        else
            out[i] = { get_used(_used_key(p, periods[i])), get_reserved(p.key) }
        end
    end
    return { 'ok', out, now }
end

local function _reset(periods)
    for i, p in ipairs(plan) do
        if not p.r then
            local key = _used_key(p, periods[i])
            used[key] = 0
            dirty_used[key] = true
        end
    end
    woke = true
    return { 'ok' }
end

-- run -------------------------------------------------------------------

local now = args.now
if now < 0 then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
if now < clock then
    now = clock
end
clock = now
local keep = args.keep
_reclaim(now, keep)
local out = {}
for j, op in ipairs(args.ops) do
    local kind = op[1]
    if kind == 'acquire' then
        out[j] = _acquire(now, op[2], op[3], op[4], op[5], op[6])
    elseif kind == 'settle' then
        out[j] = _settle(now, op[2], op[3], op[4], op[5], op[6])
    elseif kind == 'extend' then
        out[j] = _extend(now, op[2], op[3])
    elseif kind == 'record' then
        out[j] = _record(now, op[2], op[3])
    elseif kind == 'snapshot' then
        out[j] = _snapshot(now, op[2])
    elseif kind == 'reset' then
        out[j] = _reset(op[2])
    else
        error('ratebudget: unknown store operation ' .. tostring(kind))
    end
end

-- save ----------------------------------------------------------------------

redis.call('HSET', S, 'clock', fmt(clock), 'tail', fmt(tail))
for key in pairs(dirty_rates) do
    local got = rates[key]
    redis.call('HSET', S, 'r:' .. key, fmt(got[1]) .. ':' .. fmt(got[2]))
end
for key in pairs(dirty_reserved) do
    if reserved[key] == 0 then
        redis.call('HDEL', S, 'v:' .. key)
    else
        redis.call('HSET', S, 'v:' .. key, fmt(reserved[key]))
    end
end
for key in pairs(dirty_used) do
    local k = used_key_of[key]
    if used[key] == 0 then
        redis.call('DEL', k)
    else
        redis.call('SET', k, fmt(used[key]))
        local ttl = used_ttl[key]
        if ttl >= 0 then
            redis.call('PEXPIRE', k, fmt(ttl))
        end
    end
end
for id in pairs(dirty_leases) do
    local rec = leases[id]
    redis.call('HSET', L, id, cmsgpack.pack(rec))
    if rec.s == ACTIVE then
        redis.call('ZADD', E, fmt(rec.exp), id)
    else
        redis.call('ZREM', E, id)
        redis.call('ZADD', T, fmt(rec.exp), id)
    end
end
-- settled and expired records past their time go (the SQLite store's DELETE)
local gone = redis.call('ZRANGEBYSCORE', T, '-inf', fmt(clock))
for i = 1, #gone, 1000 do
    redis.call('HDEL', L, unpack(gone, i, math.min(i + 999, #gone)))
end
if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', T, '-inf', fmt(clock))
end

-- cross-process waiters blocked on a cap learn that reservations moved
if woke then
    local blk = tonumber(redis.call('HGET', S, 'blk'))
    if blk then
        if now - blk <= args.wake then
            redis.call('PUBLISH', string.sub(S, 1, -3) .. ':wake', fmt(now))
        elseif not blocked_at then
            redis.call('HDEL', S, 'blk')
        end
    end
end
if blocked_at then
    redis.call('HSET', S, 'blk', fmt(now))
end

-- an idle limiter's keys expire once nothing in them matters any more: no
-- lease or record left, every bucket full again
local horizon = 0  -- µs from now
local last = redis.call('ZRANGE', E, -1, -1, 'WITHSCORES')
if last[2] then
    horizon = math.max(horizon, tonumber(last[2]) + keep - now)
end
last = redis.call('ZRANGE', T, -1, -1, 'WITHSCORES')
if last[2] then
    horizon = math.max(horizon, tonumber(last[2]) - now)
end
for _, p in ipairs(plan) do
    if p.r then
        local level = _level(p, now)
        if level < p.cap then
            horizon = math.max(horizon, -fdiv(level - p.cap, p.rate))
        end
    end
end
local ttl = math.max(args.idle, -fdiv(-horizon, 1000))
for i = 1, 4 do
    redis.call('PEXPIRE', KEYS[i], fmt(ttl))
end

return out
