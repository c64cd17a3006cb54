#!lua name=concord
-- The `concord` function library: the commit point of every room of the distributed mode.
-- docs/distributed.md ("The function library") is its specification. Every function touches
-- the keys of one partition only (one hash tag, one slot). Errors are Redis errors whose first
-- word is the code: NOROOM, EPOCH, FENCED, HEAD, EXISTS, BADARG.

local VERSION = 2

local MAX_LOGICAL = 999999

local function badarg(what)
  return redis.error_reply('BADARG ' .. what)
end

-- An hlc's (wall ms, logical) from its text form `WWWWWWWWWWWWW-LLLLLL-node`; nil if malformed.
local function hlc_parts(text)
  if type(text) ~= 'string' or string.len(text) < 21 then
    return nil
  end
  local wall = string.sub(text, 1, 13)
  local logical = string.sub(text, 15, 20)
  if not string.match(wall, '^%d+$') or not string.match(logical, '^%d+$')
      or string.sub(text, 14, 14) ~= '-' or string.sub(text, 21, 21) ~= '-' then
    return nil
  end
  return tonumber(wall), tonumber(logical)
end

local function hlc_text(wall, logical, node)
  return string.format('%013d-%06d-%s', wall, logical, node)
end

-- The hlc following (wall, logical): the logical counter overflows into the next millisecond.
local function hlc_next(wall, logical)
  if logical >= MAX_LOGICAL then
    return wall + 1, 0
  end
  return wall, logical + 1
end

local function later(aw, al, bw, bl)
  return aw > bw or (aw == bw and al > bl)
end

local function meta_exists(meta)
  return redis.call('EXISTS', meta) == 1
end

-- concord_create(KEYS: meta; ARGV: kind, epoch, now_ms) -> [kind, epoch, head, hlc]
local function create(keys, args)
  local meta = keys[1]
  local kind, epoch, now_ms = args[1], args[2], args[3]
  if kind ~= 'stream' and kind ~= 'doc' then
    return badarg('kind')
  end
  if epoch == nil or epoch == '' then
    return badarg('epoch')
  end
  if meta_exists(meta) then
    local cur = redis.call('HMGET', meta, 'kind', 'epoch', 'head', 'hlc')
    if cur[1] ~= kind then
      return redis.error_reply('EXISTS ' .. tostring(cur[1]))
    end
    return {cur[1], cur[2], tonumber(cur[3]), cur[4]}
  end
  redis.call('HSET', meta, 'kind', kind, 'epoch', epoch, 'head', 0, 'hlc', '',
    'fence', 0, 'wm', 0, 'floor', 1, 'created_ms', now_ms or '0')
  return {kind, epoch, 0, ''}
end

-- concord_commit(KEYS: meta, log, work, idem buckets newest first...;
--   ARGV: epoch, fence|"", expected head|"", proposed hlc, node, idem ttl ms, log max len,
--         recent buckets, room, then per event: from, op id|"", data, resend flag, key|"")
-- An event without an op id may carry a key (the gateway's proposed hlc): it is looked up and
-- recorded like an op id (in a field of its own shape, `#len:from key`, that no op id can
-- take), so a call handed over again after an unknown outcome cannot commit it twice.
-- -> per event [seq, hlc, dup]
local function commit(keys, args)
  local meta, log, work = keys[1], keys[2], keys[3]
  local nbuckets = #keys - 3
  local epoch, fence, expected = args[1], args[2], args[3]
  local pw, pl = hlc_parts(args[4])
  local node = args[5]
  local idem_ttl = tonumber(args[6])
  local max_len = tonumber(args[7])
  local recent = tonumber(args[8])
  local room = args[9]
  local fixed = 9
  if pw == nil then return badarg('proposed hlc') end
  if idem_ttl == nil or max_len == nil or recent == nil then return badarg('numbers') end
  if (#args - fixed) % 5 ~= 0 then return badarg('event arity') end
  local n = (#args - fixed) / 5

  -- 1. Checks, before any write.
  local cur = redis.call('HMGET', meta, 'kind', 'epoch', 'head', 'hlc', 'fence', 'floor')
  if cur[1] == false then
    return redis.error_reply('NOROOM ' .. room)
  end
  if cur[2] ~= epoch then
    return redis.error_reply('EPOCH ' .. tostring(cur[2]))
  end
  if fence ~= '' and tostring(cur[5]) ~= fence then
    return redis.error_reply('FENCED ' .. tostring(cur[5]))
  end
  local head = tonumber(cur[3])

  -- 2. Idempotency lookups (reads only): in the recent buckets, in every bucket for resends,
  -- and within the call.
  local results = {}
  local fields = {}
  local seen = {}
  local fresh = 0
  for i = 1, n do
    local base = fixed + (i - 1) * 5
    local from, op = args[base + 1], args[base + 2]
    local resend = args[base + 4] == '1'
    local key = args[base + 5]
    local found = nil
    local field = nil
    if op ~= '' then
      field = string.len(from) .. ':' .. from .. op
    elseif key ~= '' then
      field = '#' .. string.len(from) .. ':' .. from .. key
    end
    if field ~= nil then
      fields[i] = field
      if seen[field] ~= nil then
        found = seen[field]
      else
        local limit = resend and nbuckets or math.min(recent, nbuckets)
        for b = 1, limit do
          local v = redis.call('HGET', keys[3 + b], field)
          if v then
            local sp = string.find(v, ' ', 1, true)
            found = {tonumber(string.sub(v, 1, sp - 1)), string.sub(v, sp + 1), 1}
            break
          end
        end
      end
      if found == nil then
        seen[field] = i
      end
    end
    if found ~= nil then
      -- {seq, hlc, 1} from a bucket, or the index of its first occurrence in this call
      -- (resolved once seqs are assigned)
      results[i] = found
    else
      fresh = fresh + 1
    end
  end
  if fresh > 0 and expected ~= '' and tostring(head) ~= expected then
    return redis.error_reply('HEAD ' .. head)
  end
  if fresh == 0 then
    -- Every event is a duplicate (of an earlier call: nothing in this call is new).
    return results
  end

  -- 3. Writes: seqs, hlcs, log, work stream, op keys, meta, notification.
  local lw, ll = hlc_parts(cur[4])
  if lw == nil then lw, ll = 0, 0 end
  local kind = cur[1]
  local newest = nil
  if nbuckets > 0 then newest = keys[4] end
  local notes = {}
  local seq = head
  local last_hlc = cur[4]
  for i = 1, n do
    if results[i] == nil then
      local base = fixed + (i - 1) * 5
      local from, op, data = args[base + 1], args[base + 2], args[base + 3]
      seq = seq + 1
      local nw, nl = hlc_next(lw, ll)
      if later(pw, pl, nw, nl) then nw, nl = pw, pl end
      lw, ll = nw, nl
      local hlc = hlc_text(nw, nl, node)
      last_hlc = hlc
      if op ~= '' then
        redis.call('XADD', log, seq .. '-0', 'h', hlc, 'f', from, 'o', op, 'd', data)
        redis.call('XADD', work, '*', 'r', room, 'k', kind, 'e', epoch, 's', seq, 'h', hlc,
          'f', from, 'o', op, 'd', data)
        if newest ~= nil then
          redis.call('HSET', newest, fields[i], seq .. ' ' .. hlc)
        end
      else
        redis.call('XADD', log, seq .. '-0', 'h', hlc, 'f', from, 'd', data)
        redis.call('XADD', work, '*', 'r', room, 'k', kind, 'e', epoch, 's', seq, 'h', hlc,
          'f', from, 'd', data)
        if newest ~= nil and fields[i] ~= nil then
          redis.call('HSET', newest, fields[i], seq .. ' ' .. hlc)
        end
      end
      results[i] = {seq, hlc, 0}
      local opj = 'null'
      if op ~= '' then opj = cjson.encode(op) end
      notes[#notes + 1] = '{"seq":' .. seq .. ',"hlc":' .. cjson.encode(hlc) .. ',"from":'
        .. cjson.encode(from) .. ',"op_id":' .. opj .. ',"data":' .. data .. '}'
    end
  end
  -- Duplicates within the call answer the seq of their first occurrence.
  for i = 1, n do
    if type(results[i]) == 'number' then
      local first = results[results[i]]
      results[i] = {first[1], first[2], 1}
    end
  end
  if newest ~= nil and idem_ttl > 0 then
    redis.call('PEXPIRE', newest, idem_ttl)
  end
  if max_len > 0 and redis.call('XLEN', log) > max_len then
    local floor = math.max(seq - max_len + 1, tonumber(cur[6]) or 1)
    redis.call('XTRIM', log, 'MINID', floor .. '-0')
    redis.call('HSET', meta, 'head', seq, 'hlc', last_hlc, 'floor', floor)
  else
    redis.call('HSET', meta, 'head', seq, 'hlc', last_hlc)
  end
  local channel = string.sub(meta, 1, string.len(meta) - string.len(room) - 2) .. 'n:' .. room
  redis.call('PUBLISH', channel, '{"room":' .. cjson.encode(room) .. ',"epoch":'
    .. cjson.encode(epoch) .. ',"events":[' .. table.concat(notes, ',') .. ']}')
  return results
end

-- concord_lease(KEYS: meta, owner; ARGV: gateway id, lease ms) -> fence, 0 when held by another
local function lease(keys, args)
  local meta, owner = keys[1], keys[2]
  local id, ms = args[1], tonumber(args[2])
  if id == nil or id == '' then return badarg('gateway id') end
  if ms == nil or ms <= 0 then return badarg('lease ms') end
  if not meta_exists(meta) then
    return redis.error_reply('NOROOM ' .. meta)
  end
  local holder = redis.call('GET', owner)
  if holder == id then
    redis.call('PEXPIRE', owner, ms)
    return tonumber(redis.call('HGET', meta, 'fence'))
  end
  if holder then
    return 0
  end
  redis.call('SET', owner, id, 'PX', ms)
  return redis.call('HINCRBY', meta, 'fence', 1)
end

-- concord_release(KEYS: owner; ARGV: gateway id) -> 1 when dropped, 0 when not the holder
local function release(keys, args)
  if redis.call('GET', keys[1]) == args[1] then
    redis.call('DEL', keys[1])
    return 1
  end
  return 0
end

-- concord_persisted(KEYS: meta, log[, channel]; ARGV: epoch, seq, keep) -> [wm, floor]
-- With the room's channel, a raised watermark is published there: {"room","epoch","wm"}.
local function persisted(keys, args)
  local meta, log, channel = keys[1], keys[2], keys[3]
  local epoch, seq, keep = args[1], tonumber(args[2]), tonumber(args[3])
  if seq == nil or seq < 0 or keep == nil or keep < 0 then return badarg('numbers') end
  local cur = redis.call('HMGET', meta, 'epoch', 'head', 'wm', 'floor')
  if cur[1] == false then
    return redis.error_reply('NOROOM ' .. meta)
  end
  if cur[1] ~= epoch then
    return redis.error_reply('EPOCH ' .. tostring(cur[1]))
  end
  local head = tonumber(cur[2])
  local wm = tonumber(cur[3]) or 0
  local floor = tonumber(cur[4]) or 1
  if seq > wm then
    wm = seq
    redis.call('HSET', meta, 'wm', wm)
    if channel then
      redis.call('PUBLISH', channel, '{"epoch":' .. cjson.encode(epoch) .. ',"wm":' .. wm .. '}')
    end
  end
  -- Keep every seq >= wm - keep, and always the head.
  local target = math.min(wm - keep, head)
  if target > floor then
    floor = target
    redis.call('XTRIM', log, 'MINID', floor .. '-0')
    redis.call('HSET', meta, 'floor', floor)
  end
  return {wm, floor}
end

-- concord_rebuild(KEYS: meta[, log]; ARGV: kind, epoch, head, hlc, now_ms[, seen epoch,
-- seen head]) -> [rebuilt 0|1, kind, epoch, head, hlc]
-- Without the last two: only a room whose meta is absent. With them: also a room whose meta is
-- still at (seen epoch, seen head) — a lost tail —, whose log is then emptied (its entries are
-- below the new head).
local function rebuild(keys, args)
  local meta, log = keys[1], keys[2]
  local seen_epoch, seen_head = args[6], tonumber(args[7] or '')
  local kind, epoch, head, hlc = args[1], args[2], tonumber(args[3]), args[4]
  if kind ~= 'stream' and kind ~= 'doc' then return badarg('kind') end
  if epoch == nil or epoch == '' then return badarg('epoch') end
  if head == nil or head < 0 then return badarg('head') end
  if hlc ~= '' and hlc_parts(hlc) == nil then return badarg('hlc') end
  if meta_exists(meta) then
    local cur = redis.call('HMGET', meta, 'kind', 'epoch', 'head', 'hlc')
    local seen = seen_epoch ~= nil and seen_epoch ~= '' and cur[2] == seen_epoch
      and tonumber(cur[3]) == seen_head and seen_head < head and cur[1] == kind
    if not seen then
      return {0, cur[1], cur[2], tonumber(cur[3]), cur[4]}
    end
    if log then
      redis.call('DEL', log)
    end
  end
  -- The fence restarts at now_ms: above every fence handed out before the loss (fences count
  -- acquisitions, far fewer than milliseconds), so a zombie owner's fence never matches again.
  local now_ms = tonumber(args[5]) or 0
  redis.call('HSET', meta, 'kind', kind, 'epoch', epoch, 'head', head, 'hlc', hlc,
    'fence', now_ms, 'wm', head, 'floor', head + 1, 'created_ms', now_ms)
  return {1, kind, epoch, head, hlc}
end

-- concord_seat(KEYS: roster; ARGV: limit, gw, client, info): a seat in a room of at most
-- `limit` members, taken atomically when a client joins through gateway `gw`. Members are the
-- distinct clients of the roster's `m|{gw}|{client}` fields (a client present through several
-- gateways counts once; a lapsed gateway's fields count until they are removed). A client
-- already present, or a room below the limit, gets its field written (`info`: its member
-- info, what the gateway's roster delta writes again) and 1; a full room gets 0.
local function seat(keys, args)
  local roster = keys[1]
  local limit = tonumber(args[1])
  local gw, client, info = args[2], args[3], args[4]
  if not limit or not gw or not client or not info then
    return badarg('seat: limit, gw, client, info')
  end
  local seen, n = {}, 0
  local present = false
  for _, f in ipairs(redis.call('HKEYS', roster)) do
    local c = string.match(f, '^m|[^|]*|(.*)$')
    if c then
      if c == client then
        present = true
      elseif not seen[c] then
        seen[c] = true
        n = n + 1
      end
    end
  end
  if not present and n >= limit then
    return 0
  end
  redis.call('HSET', roster, 'm|' .. gw .. '|' .. client, info)
  return 1
end

local function version()
  return VERSION
end

redis.register_function{function_name='concord_create', callback=create}
redis.register_function{function_name='concord_commit', callback=commit}
redis.register_function{function_name='concord_lease', callback=lease}
redis.register_function{function_name='concord_release', callback=release}
redis.register_function{function_name='concord_persisted', callback=persisted}
redis.register_function{function_name='concord_rebuild', callback=rebuild}
redis.register_function{function_name='concord_seat', callback=seat}
redis.register_function{function_name='concord_version', callback=version, flags={'no-writes'}}
