//! The Lua scripts, one per shared operation. Pool scripts run behind the fence ([`FENCE_LIB`]);
//! every key of one script shares a hash tag, so they run on Redis Cluster; none reads `TIME`
//! except the heartbeat (to measure clock offsets).
//!
//! Each pool script exists in two forms with the same keys, arguments and result: a function of
//! one library (Redis 7 `FUNCTION LOAD`, called with `FCALL`), which reads which data set the
//! server holds (its `run_id` and replication id) once per loaded library and keeps it, and a
//! script (`EVALSHA`) that reads it on every call, for a Redis without functions (6.x, or one
//! whose ACL refuses `FUNCTION`).

use redis::Script;
use sha2::{Digest, Sha256};

use super::pool::{Pops, LEFT_EPOCHS};

/// The fence every pool script passes first. `fence(keys, args, run, reread, bump, seen)`:
/// keys[1] is the tenant's fence, keys[2] its serial, args[1] the epoch the replica expects,
/// args[2] a fresh epoch to start if the fence names another data set than this server's
/// (`run`, as `server_run` names it), args[3] the highest serial the replica has seen in its
/// epoch. When the fence does not name `run` and `reread` is given (`run` was kept from an
/// earlier call), the server's data set is read afresh before it is judged. `seen` is the
/// loaded library's memory of serials (below; `nil` in the script form). Returns the current
/// epoch when it is not the expected one (the script then returns `{current_epoch}` and does
/// nothing else; otherwise the body's result comes back as `{'', result, serial}`), the data
/// set judged by, and the serial.
///
/// `server_run` names the data set by the server process (`run_id`) and the history of its data
/// (`master_replid`: new when the server is promoted, its primary's after it takes a full copy
/// from one). The process alone is not enough: a primary that resyncs from the replica promoted
/// in its place, and is promoted back, holds that replica's older copy under its own `run_id`.
/// A primary whose replicas have all been gone for `repl-backlog-ttl` takes a new replication
/// id over the same data: a new epoch once. A service whose `INFO` shows no replication id, or
/// refuses the section, is judged by the process alone.
///
/// Neither names a data set written back into the same running process (an older dump loaded
/// with `DEBUG RELOAD`, an old backup's keys replayed with `RESTORE`): the tenant's *serial*
/// does. Every call that pops URLs (`bump`: take and hit) counts it up, and an older copy of the
/// data set holds it with the older count, so a serial behind one seen before went back in
/// time: a new epoch starts there and nothing pooled in the old one is read again. Two memories
/// hold what was seen:
/// - each replica sends the highest serial it has seen in its epoch (every pool call reads the
///   serial, so a replica that syncs a tenant each tick knows it to within a tick);
/// - the loaded library (functions only) keeps, per tenant, the highest serial any call has
///   found in each of its last `pool::LEFT_EPOCHS` epochs (as many as a replica remembers), so
///   a replica that has made no call since, or started since, is judged by it too. That memory
///   lives in the server's Lua engine, outside the data set: `RESTORE` leaves it, while `DEBUG
///   RELOAD` (and a restart, a full copy from a primary, `FUNCTION RESTORE`) loads the library
///   afresh from the data set, without it. So a fence the library has no memory of was written before it was loaded, by a
///   data set that may be an older copy, and is not trusted: the library's first call for each
///   tenant starts a new epoch there, unless it started the fence itself.
pub(super) const FENCE_LIB: &str = r"
local function server_run()
  local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  local replication = redis.pcall('INFO', 'replication')
  return run .. (type(replication) == 'string' and string.match(replication, 'master_replid:(%x+)') or '')
end
-- Judges the serial found in the tenant's epoch against the library's memory: true if the
-- library saw a later one in that epoch, or has no memory of the tenant (the fence was written
-- before it was loaded). Unless the serial is behind, remembers `stored` (the serial as the call
-- leaves it). Memory of the tenant's last LEFT_EPOCHS epochs is kept.
local function went_back(seen, key, epoch, serial, stored)
  local mine = seen[key]
  if not mine then
    seen[key] = {{epoch, stored}}
    return true
  end
  for i = #mine, 1, -1 do
    local e = mine[i]
    if e[1] == epoch then
      if serial < e[2] then return true end
      e[2] = stored
      return false
    end
  end
  if #mine == LEFT_EPOCHS then table.remove(mine, 1) end
  mine[#mine + 1] = {epoch, stored}
  return false
end
local function fence(keys, args, run, reread, bump, seen)
  local held = redis.call('GET', keys[1])
  local r, epoch, serial
  if held then r, epoch = string.match(held, '^(%x+):(.+)$') end
  if r ~= run and reread then run = reread() end
  local bumped = bump and epoch == args[1]
  if r == run then
    if bumped then
      serial = redis.call('INCR', keys[2]) - 1
    else
      serial = tonumber(redis.call('GET', keys[2]) or 0)
    end
    -- Behind what the replica or the library has seen: the data set went back in time. (A fence
    -- the library has no memory of is not trusted, but remembered: a copy from this epoch
    -- written back later is behind it.)
    if epoch == args[1] and serial < tonumber(args[3]) then r = nil end
    if seen and went_back(seen, keys[2], epoch, serial, bumped and serial + 1 or serial) then
      r = nil
    end
  end
  if r ~= run then
    epoch = args[2]
    redis.call('SET', keys[1], run .. ':' .. epoch)
    -- The serial exists from the epoch's start: a copy of the data set made before its first
    -- pop holds it (at the count then), so writing the copy back takes the serial back too.
    serial = redis.call('INCRBY', keys[2], 0)
    if seen then went_back(seen, keys[2], epoch, serial, serial) end
  elseif bumped then
    serial = serial + 1
  end
  if epoch ~= args[1] then return epoch, run, 0 end
  return nil, run, serial
end
";

/// Lua helpers shared by the pool scripts. A pooled member is the URL's 16-hex-digit digest, one
/// character naming why it was fetched ([`crate::metrics::Fetch::code`]), then the URL (as
/// [`crate::pool::PooledUrl::encode`] gives it), so a take or a purge reads the digest instead of
/// hashing the URL again. The tenant's count is a sorted set of each member's digest and reason
/// (its first 17 characters) scored like the pool, so it is trimmed by time like the URLs
/// themselves (a key that expires with URLs inside leaves no drift behind) and adding the same
/// URL twice counts once (a retried put cannot double-count). Only [`PUT`] reads the count, and
/// trims it first. A stale URL is counted as waste
/// (`embedgate_urls_wasted_total{reason="expired"}`, under its reason) when its digest leaves the
/// count, by a purge of its key or by the count's own trim (in [`PUT`] and [`SYNC`]): exactly
/// once, also when Redis expired its key with it inside and no replica ever purged it. Scripts
/// return the stale URLs they counted as a string of their reasons' characters.
pub(super) const POOL_LIB: &str = r"
local function digest(url) return string.sub(redis.sha1hex(url), 1, 16) end
local function counted(member) return string.sub(member, 1, 17) end
-- Takes a member out of the tenant's count; returns its reason's character if it was counted.
local function uncount(count, member)
  if redis.call('ZREM', count, counted(member)) == 1 then return string.sub(member, 17, 17) end
  return ''
end
-- Removes a key's URLs issued before the cutoff from it and from the tenant's count; returns
-- the reasons of those that left the count (the others were counted when the count was trimmed).
local function purge(pool, count, cutoff)
  local stale = redis.call('ZRANGEBYSCORE', pool, '-inf', '(' .. cutoff)
  if #stale == 0 then return '' end
  local wasted = {}
  for _, member in ipairs(stale) do wasted[#wasted + 1] = uncount(count, member) end
  redis.call('ZREMRANGEBYSCORE', pool, '-inf', '(' .. cutoff)
  return table.concat(wasted)
end
-- Trims the tenant's count of URLs issued before the cutoff whose keys Redis expired with them
-- inside; returns their reasons.
local function trim_count(count, cutoff)
  local stale = redis.call('ZRANGEBYSCORE', count, '-inf', '(' .. cutoff)
  if #stale == 0 then return '' end
  local wasted = {}
  for _, c in ipairs(stale) do wasted[#wasted + 1] = string.sub(c, 17, 17) end
  redis.call('ZREMRANGEBYSCORE', count, '-inf', '(' .. cutoff)
  return table.concat(wasted)
end
";

/// Lua helpers shared by the limiter scripts. A limiter's state is its theoretical arrival time
/// (TAT) and the latest clock any caller has sent (`"tat,seen"`; a bare number from an older
/// release reads as a TAT with nothing seen).
/// - A call that reaches Redis late (its `now` older than one already seen: a stall in the client,
///   Redis blocked, another replica's calls served first) is judged at the latest `now` seen, so
///   a delay on the way is never mistaken for a burst and the limiter's time never runs back.
/// - Only up to `max_late` (ms) late, though: a `seen` further ahead than any call can be late
///   came from a clock that was ahead (a step before the heartbeat caught it). Trusting it would
///   stop the limiter's time, and a TAT that far ahead would refuse everyone until the real clock
///   caught up. Such a call is judged by its own clock, and a TAT it finds further ahead than
///   one full burst is forgotten: at most one burst more is admitted, once.
/// - Each call carries its replica's limit, and the limit may differ between calls (a reload
///   changed it; while a fleet reloads, replicas disagree). The state carries over: a TAT
///   further ahead than the call's full burst, on a clock it trusts, was counted under a limit
///   whose burst spans more, and the call finds the limiter full. So a lowered limit gives no
///   fresh burst, and a replica on a lower limit never resets what one on a higher limit counted.
pub(super) const LIMIT_LIB: &str = r"
local function limit_read(key)
  local v = redis.call('GET', key)
  if not v then return nil, 0 end
  local t, s = string.match(v, '^([^,]+),(.+)$')
  if t then return tonumber(t), tonumber(s) end
  return tonumber(v), 0
end
-- The clock to judge a call by: its own, or the latest seen if it is late by at most max_late.
local function limit_now(now, seen, max_late)
  if seen > now and seen - now <= max_late then return seen end
  return now
end
-- The TAT to start from at `now`, for a limiter whose full burst spans `window` ms. A TAT
-- further ahead was counted under a limit whose burst spans more (a reload lowered it, or the
-- replica that counted it has not reloaded yet): the limiter is full. But one written by a clock
-- that was ahead (`seen` later than `now`: `limit_now` did not trust it) is forgotten.
local function limit_tat(tat, seen, now, window)
  if not tat or tat < now then return now end
  if tat > now + window then
    if seen > now then return now end
    return now + window
  end
  return tat
end
local function limit_write(key, tat, now)
  redis.call('SET', key, string.format('%.3f,%.0f', tat, now), 'PX', math.ceil(tat - now) + 1000)
end
";

/// Removes the stale URLs of a key, pops the one with the least remaining validity, and keeps
/// the tenant's count in step. Idempotent per take when `remember_ms` is not 0: the answer is
/// remembered under the take's id that long (`stale,issued_ms:member`, when the take removed
/// anything), so the same call sent again (a client retry after a lost reply) returns the same
/// URL instead of popping, and losing, another, and the replica can read what a take whose
/// reply it gave up on removed (`cluster::kept`). KEYS: pool,
/// count, take id. ARGV: cutoff_ms, remember_ms. Returns `{stale, member, issued_ms}` (member
/// `""` when empty).
pub(super) const TAKE: &str = r"
local remember = tonumber(ARGV[2])
if remember > 0 then
  local prior = redis.call('GET', KEYS[3])
  if prior then
    local stale, issued, member = string.match(prior, '^(%a*),(%d+):(.*)$')
    return {stale, member, tonumber(issued)}
  end
end
local stale = purge(KEYS[1], KEYS[2], ARGV[1])
local got = redis.call('ZPOPMIN', KEYS[1])
local issued, member = '0', ''
if #got > 0 then
  redis.call('ZREM', KEYS[2], counted(got[1]))
  issued, member = string.format('%.0f', tonumber(got[2])), got[1]
end
if remember > 0 and (member ~= '' or stale ~= '') then
  redis.call('SET', KEYS[3], stale .. ',' .. issued .. ':' .. member, 'PX', remember)
end
return {stale, member, tonumber(issued)}
";

/// The hit path's one round trip: counts the request against the tenant's inbound GCRA (as
/// [`GCRA`] with no reserve) and, only when it is admitted, does [`TAKE`]. When `remember_ms`
/// is not 0 the answer, a refusal included, is remembered under the call's id like TAKE's
/// (`allowed,remaining or retry_after_ms,stale,issued_ms:member`), so
/// the same call sent again neither counts the request twice nor pops a second URL. KEYS: pool,
/// count, call id, the tenant's limit. ARGV: cutoff_ms, remember_ms, now_ms, interval_ms,
/// burst, max_late_ms. A call that arrives late (see [`LIMIT_LIB`]) is judged at the latest
/// clock seen, and its cutoff moves with it, so it can hand out nothing staler than a call on
/// time would. Returns `{allowed, remaining (allowed) or retry_after_ms (refused), stale,
/// member, issued_ms}` (member `""` when empty).
pub(super) const HIT: &str = r"
local remember = tonumber(ARGV[2])
if remember > 0 then
  local prior = redis.call('GET', KEYS[3])
  if prior then
    local a, n, stale, issued, member = string.match(prior, '^(%d),(%d+),(%a*),(%d+):(.*)$')
    return {tonumber(a), tonumber(n), stale, member, tonumber(issued)}
  end
end
local now, interval, burst = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tat, seen = limit_read(KEYS[4])
-- A late call is judged at the latest clock seen, and its cutoff moves with it.
local late = limit_now(now, seen, tonumber(ARGV[6])) - now
now = now + late
local cutoff = late == 0 and ARGV[1] or string.format('%.0f', tonumber(ARGV[1]) + late)
tat = limit_tat(tat, seen, now, interval * burst)
local new_tat = tat + interval
if new_tat - now > interval * burst then
  local retry = math.max(1, math.ceil(new_tat - now - interval * burst))
  if remember > 0 then redis.call('SET', KEYS[3], '0,' .. retry .. ',,0:', 'PX', remember) end
  return {0, retry, '', '', 0}
end
limit_write(KEYS[4], new_tat, now)
local remaining = math.floor((interval * burst - (new_tat - now)) / interval)
-- The oldest URL first: only when it is stale are the key's stale ones purged (the common hit
-- pays no range scan), and the next oldest popped.
local stale = ''
local got = redis.call('ZPOPMIN', KEYS[1])
if #got > 0 and tonumber(got[2]) < tonumber(cutoff) then
  stale = uncount(KEYS[2], got[1]) .. purge(KEYS[1], KEYS[2], cutoff)
  got = redis.call('ZPOPMIN', KEYS[1])
end
local issued, member = '0', ''
if #got > 0 then
  redis.call('ZREM', KEYS[2], counted(got[1]))
  issued, member = string.format('%.0f', tonumber(got[2])), got[1]
end
if remember > 0 then
  local kept = '1,' .. remaining .. ',' .. stale .. ',' .. issued .. ':' .. member
  redis.call('SET', KEYS[3], kept, 'PX', remember)
end
return {1, remaining, stale, member, tonumber(issued)}
";

/// Adds one URL unless the key or the tenant is full, or it was pooled once already (a put sent
/// again: it answers as stored and changes nothing); a landing (a prefetch's own URL) counts as
/// one of this replica's prefetches landed: one fewer in flight, one more landed (see [`SYNC`]).
/// KEYS: pool, count, demand, pooled (the tenant's record of the URLs it pooled, scored like
/// the count). ARGV: issued_ms, url, cutoff_ms, max_per_key, tenant_cap, ttl_ms, replica, reason
/// (its character), landing (1 or 0). Returns `{stale, stored}`.
pub(super) const PUT: &str = r"
local d = digest(ARGV[2]) .. ARGV[8]
-- Each URL enters the pool once: a put sent again (a Cluster connection re-sends a command whose
-- answer did not come in time) after its URL was pooled, and perhaps taken and handed out
-- already, adds nothing. The record of pooled URLs is trimmed by time like the count.
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[3])
if redis.call('ZSCORE', KEYS[4], d) then return {'', 1} end
local entry = ARGV[9] == '1' and redis.call('HGET', KEYS[3], ARGV[7])
if entry then
  local at, rate, n, landed = string.match(entry, '^([^,]+),([^,]+),([^,]+),([^,]+)$')
  if at then
    n = math.max(0, tonumber(n) - 1)
    landed = (tonumber(landed) + 1) % 4294967296
    redis.call('HSET', KEYS[3], ARGV[7], at .. ',' .. rate .. ',' .. n .. ',' .. landed)
  end
end
local stale = purge(KEYS[1], KEYS[2], ARGV[3]) .. trim_count(KEYS[2], ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4])
    or redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
  return {stale, 0}
end
redis.call('ZADD', KEYS[1], ARGV[1], d .. ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[1], d)
redis.call('ZADD', KEYS[4], ARGV[1], d)
local ttl = tonumber(ARGV[6])
for _, i in ipairs({1, 2, 4}) do
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return {stale, 1}
";

/// For each of a tenant's keys: records this replica's demand and prefetches in flight, purges
/// stale URLs, and reads the fleet's view. One call per tenant (and per chunk of keys) each tick,
/// not one per key. KEYS: count, then pool and demand per key. ARGV: cutoff_ms, replica, now_ms,
/// keep_ms (how long a replica's entry counts without being refreshed), then rate, in_flight and
/// landed per key. Returns `{stale, {{pooled, total_rate (string), replicas, total_in_flight},
/// ...}}`.
///
/// A replica's entry is `ms,rate,in_flight,landed`. The replica reads its prefetches in flight
/// and its landings so far at one instant; some of those in flight may have landed here since
/// (their put came first), and are counted in the entry's landings, not yet in the replica's:
/// the difference is taken off (and the entry keeps its own landings), so a landing is never
/// counted in flight again. A difference that cannot be (more than in flight, or behind: an
/// entry that expired, a put whose answer was lost) starts both counts again from the
/// replica's.
pub(super) const SYNC: &str = r"
local cutoff, replica = ARGV[1], ARGV[2]
local now, keep = tonumber(ARGV[3]), tonumber(ARGV[4])
local wrap = 4294967296
local stale_total, out = {}, {}
for k = 1, (#KEYS - 1) / 2 do
  local pool, demand = KEYS[2 * k], KEYS[2 * k + 1]
  stale_total[#stale_total + 1] = purge(pool, KEYS[1], cutoff)
  local own, landed = tonumber(ARGV[3 + 3 * k]), tonumber(ARGV[4 + 3 * k])
  local mine = redis.call('HGET', demand, replica)
  local here = mine and tonumber(string.match(mine, ',([^,]+)$'))
  if here then
    local ahead = (here - landed) % wrap
    if ahead <= own then own, landed = own - ahead, here end
  end
  redis.call('HSET', demand, replica,
    ARGV[3] .. ',' .. ARGV[2 + 3 * k] .. ',' .. own .. ',' .. landed)
  local total, replicas, flying = 0, 0, 0
  local all = redis.call('HGETALL', demand)
  for i = 1, #all, 2 do
    local at, rate, n = string.match(all[i + 1], '^([^,]+),([^,]+),([^,]+),')
    if at and tonumber(at) >= now - keep then
      total = total + tonumber(rate)
      flying = flying + tonumber(n)
      replicas = replicas + 1
    else
      redis.call('HDEL', demand, all[i])
    end
  end
  redis.call('PEXPIRE', demand, keep)
  out[k] = {redis.call('ZCARD', pool), tostring(total), replicas, flying}
end
stale_total[#stale_total + 1] = trim_count(KEYS[1], cutoff)
return {table.concat(stale_total), out}
";

/// Claims up to `want` prefetches for this replica so that the shared pool plus every
/// replica's prefetches in flight stays within `limit`; records the claim as this replica's in
/// flight and returns how many were granted. KEYS: pool, demand. ARGV: replica, now_ms, keep_ms,
/// want, limit.
pub(super) const CLAIM: &str = r"
local now, keep = tonumber(ARGV[2]), tonumber(ARGV[3])
local want, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local have = redis.call('ZCARD', KEYS[1])
local mine
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local at, rate, n, landed = string.match(all[i + 1], '^([^,]+),([^,]+),([^,]+),([^,]+)$')
  if at and tonumber(at) >= now - keep then
    have = have + tonumber(n)
    if all[i] == ARGV[1] then mine = {at, rate, tonumber(n), landed} end
  end
end
local grant = math.max(0, math.min(want, limit - have))
if grant > 0 and mine then
  redis.call('HSET', KEYS[2], ARGV[1],
    mine[1] .. ',' .. mine[2] .. ',' .. (mine[3] + grant) .. ',' .. mine[4])
end
return grant
";

/// GCRA. ARGV: now_ms, interval_ms, burst, reserve (tokens that must stay for others),
/// max_late_ms (see [`LIMIT_LIB`]).
/// Returns `{allowed, retry_after_ms, remaining}`.
pub(super) const GCRA: &str = r"
local now, interval = tonumber(ARGV[1]), tonumber(ARGV[2])
local burst, reserve = tonumber(ARGV[3]), tonumber(ARGV[4])
local tat, seen = limit_read(KEYS[1])
now = limit_now(now, seen, tonumber(ARGV[5]))
tat = limit_tat(tat, seen, now, interval * burst)
local new_tat = tat + interval
local limit = interval * (burst - reserve)
if new_tat - now > limit then
  return {0, math.ceil(new_tat - now - limit), 0}
end
limit_write(KEYS[1], new_tat, now)
return {1, 0, math.floor((interval * burst - (new_tat - now)) / interval)}
";

/// The fleet-wide upstream budget of an account, shared between tenants by weight as each
/// replica's own budget shares it: every tenant has a share bucket filling at its weight of the
/// rate. Within its share a call may take the account's budget down to the priority's reserve;
/// beyond it, only while the budget is uncontended (more than half the burst left), and then
/// without touching the share. KEYS: account GCRA, tenant share GCRA. ARGV: now_ms, interval_ms,
/// burst, reserve, share_interval_ms, share_burst, max_late_ms (see [`LIMIT_LIB`]). Returns
/// `{allowed, retry_after_ms}`.
pub(super) const BUDGET: &str = r"
local now, interval = tonumber(ARGV[1]), tonumber(ARGV[2])
local burst, reserve = tonumber(ARGV[3]), tonumber(ARGV[4])
local sint, sburst = tonumber(ARGV[5]), tonumber(ARGV[6])
local tat, seen = limit_read(KEYS[1])
local stat, sseen = limit_read(KEYS[2])
now = limit_now(now, math.max(seen, sseen), tonumber(ARGV[7]))
tat = limit_tat(tat, seen, now, interval * burst)
stat = limit_tat(stat, sseen, now, sint * sburst)
local within = stat + sint - now <= sint * sburst
if not within then reserve = math.max(reserve, 0.5 * burst) end
local new_tat = tat + interval
local limit = interval * (burst - reserve)
if new_tat - now > limit then
  local wait = new_tat - now - limit
  if not within then wait = math.min(wait, stat + sint - now - sint * sburst) end
  return {0, math.max(1, math.ceil(wait))}
end
limit_write(KEYS[1], new_tat, now)
if within then limit_write(KEYS[2], stat + sint, now) end
return {1, 0}
";

/// Announces a replica and counts the live ones; returns `{live, redis_secs, redis_micros}` (the
/// server's clock, to measure this replica's offset). ARGV: replica, now_ms, dead_after_ms.
///
/// First it reads `INFO server` as the pool scripts' fence does: a Redis whose ACL refuses it
/// (`-@dangerous` does) can never share the pool, and a heartbeat that passed would rejoin the
/// fleet only for the next pool call to fail. Redis's own refusal inside a script names the
/// script, not the command, so this one says which and why (`NOPERM …`).
pub(super) const HEARTBEAT: &str = r"
redis.replicate_commands()
local info = redis.pcall('INFO', 'server')
if type(info) == 'table' and info.err then
  return redis.error_reply('NOPERM the ACL refuses INFO, which the pool fence needs to tell a restarted Redis (grant +info)')
end
local now, dead = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - dead))
redis.call('PEXPIRE', KEYS[1], dead * 2)
local t = redis.call('TIME')
return {redis.call('ZCARD', KEYS[1]), tonumber(t[1]), tonumber(t[2])}
";

/// The fleet's session views (`cluster::views`): appends this replica's batch (unless empty) to
/// the stream, then reads the batches after `after` (a stream id; `0` from the oldest kept),
/// other replicas' only. KEYS: the stream. ARGV: replica, batch, after, max_batches (the stream's
/// bound, approximate), count (most batches read), ttl_ms. Returns `{last id read, {batch, ...}}`.
pub(super) const VIEWS: &str = r"
redis.replicate_commands()
local replica, batch, after = ARGV[1], ARGV[2], ARGV[3]
if batch ~= '' then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'r', replica, 'v', batch)
end
local last, out = after, {}
for _, e in ipairs(redis.call('XRANGE', KEYS[1], after, '+', 'COUNT', tonumber(ARGV[5]) + 1)) do
  if e[1] ~= after then
    last = e[1]
    if e[2][2] ~= replica then out[#out + 1] = e[2][4] end
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {last, out}
";

/// A limiter script: [`LIMIT_LIB`], then `body`.
fn limiter(body: &str) -> Script {
    Script::new(&format!("{LIMIT_LIB}\n{body}"))
}

/// A pool script in its script form: the fence with the server's data set read now, then `body`
/// with its keys and arguments shifted past the fence's, its result wrapped as
/// `{'', result, serial}`.
fn fenced_script(body: &str, bump: bool) -> String {
    format!(
        "redis.replicate_commands()\nlocal LEFT_EPOCHS = {LEFT_EPOCHS}\n{FENCE_LIB}\n{POOL_LIB}\n{LIMIT_LIB}\nlocal current, _, serial = fence(KEYS, ARGV, server_run(), nil, {bump})\nif current then return {{current}} end\nlocal KEYS, ARGV = {{unpack(KEYS, 3)}}, {{unpack(ARGV, 4)}}\nreturn {{'', (function()\n{body}\nend)(), serial}}\n"
    )
}

/// The pool scripts, by the operation name their function carries, and whether they pop URLs
/// (and so count the tenant's serial up; see [`FENCE_LIB`]).
const POOL_SCRIPTS: [(&str, &str, bool); 5] = [
    ("take", TAKE, true),
    ("hit", HIT, true),
    ("put", PUT, false),
    ("claim", CLAIM, false),
    ("sync", SYNC, false),
];

/// The library of the pool scripts' functions: `(name, code)`. The name carries a digest of the
/// code, so replicas of two releases sharing a Redis load two libraries side by side instead of
/// replacing each other's. The server's data set (`server_run`) is read on a function's first
/// call after the library was loaded and kept in the library's state, which lives in the server
/// process's Lua engine. That state cannot outlive the process, and a replica's full copy of its
/// primary's data set loads the primary's library afresh (a partial one continues a history the
/// replica already had), so a data set loaded, copied or promoted is seen as one, as by the
/// script form (`fleet_scripts::a_primary_promoted_again_after_resyncing_…`).
fn library() -> (String, String) {
    let mut code = format!(
        "#!lua name=LIBRARY\nlocal LEFT_EPOCHS = {LEFT_EPOCHS}\n{FENCE_LIB}\n{POOL_LIB}\n{LIMIT_LIB}\nlocal run\nlocal seen = {{}}\nlocal function fenced(body, bump)\n  return function(keys, args)\n    local current, serial\n    current, run, serial = fence(keys, args, run or server_run(), server_run, bump, seen)\n    if current then return {{current}} end\n    return {{'', body({{unpack(keys, 3)}}, {{unpack(args, 4)}}), serial}}\n  end\nend\n"
    );
    for (op, body, bump) in POOL_SCRIPTS {
        code.push_str(&format!(
            "redis.register_function('LIBRARY_{op}', fenced(function(KEYS, ARGV)\n{body}\nend, {bump}))\n"
        ));
    }
    let digest = Sha256::digest(code.as_bytes());
    let name = format!("embedgate_{}", &hex::encode(digest)[..12]);
    let code = code.replace("LIBRARY", &name);
    (name, code)
}

/// What a pool script does when Redis answers that the tenant's epoch is not the one this
/// replica knew (a new data set, or another replica started the epoch first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnNewEpoch {
    /// Learn the epoch and send the call once more in it.
    SendAgain,
    /// Learn the epoch and give the call up as of unknown outcome (see `Fleet::put`), unless
    /// it was sent in no epoch at all: a replica that knew none yet, whose call no fence lets
    /// run.
    GiveUp,
}

/// A pool script in both forms. Both are sent as plain commands, so that a call that pops URLs
/// can be left to finish on its own when its caller stops waiting (see `Request::Pop`).
pub(super) struct Fenced {
    /// The script form's code (`SCRIPT LOAD`, when Redis answers `NOSCRIPT`) and its SHA-1
    /// (`EVALSHA`).
    pub(super) code: String,
    pub(super) sha: String,
    /// The library's function (`FCALL`).
    pub(super) function: String,
    /// What a call does when it meets a new epoch.
    pub(super) on_new_epoch: OnNewEpoch,
    /// Where the reply of a script that pops URLs (take, hit) holds what it removed from the
    /// pool; `None` for the others.
    pub(super) pops: Option<Pops>,
}

pub(super) struct Scripts {
    pub(super) take: Fenced,
    pub(super) hit: Fenced,
    pub(super) put: Fenced,
    pub(super) claim: Fenced,
    pub(super) sync: Fenced,
    pub(super) gcra: Script,
    pub(super) budget: Script,
    pub(super) heartbeat: Script,
    pub(super) views: Script,
    /// The code `FUNCTION LOAD` takes: every pool script's function.
    pub(super) library: String,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        let (name, library) = library();
        let fenced = |op: &str| {
            let (_, body, bump) = POOL_SCRIPTS
                .iter()
                .find(|(o, _, _)| *o == op)
                .expect("a pool script");
            let code = fenced_script(body, *bump);
            Fenced {
                sha: Script::new(&code).get_hash().to_owned(),
                code,
                function: format!("{name}_{op}"),
                on_new_epoch: OnNewEpoch::SendAgain,
                pops: None,
            }
        };
        Scripts {
            take: Fenced {
                pops: Some(Pops::TAKE),
                ..fenced("take")
            },
            hit: Fenced {
                pops: Some(Pops::HIT),
                ..fenced("hit")
            },
            // Not sent again in a new epoch: see `Fleet::put`.
            put: Fenced {
                on_new_epoch: OnNewEpoch::GiveUp,
                ..fenced("put")
            },
            claim: fenced("claim"),
            sync: fenced("sync"),
            gcra: limiter(GCRA),
            budget: limiter(BUDGET),
            heartbeat: Script::new(HEARTBEAT),
            views: Script::new(VIEWS),
            library,
        }
    }
}
