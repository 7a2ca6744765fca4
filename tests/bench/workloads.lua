-- wrk driver for POST /identify. WORKLOAD picks the mix; CUSTOMERS is how many were preloaded
-- (customer i has email ci@bench.test and phone number 1000000000+i); RUN keeps new values of
-- one wrk run apart from those of another.
local workload = os.getenv("WORKLOAD") or "checkout"
local customers = tonumber(os.getenv("CUSTOMERS") or "20000")
local run = tonumber(os.getenv("RUN") or "0")
local BLOCK = 8 -- merges join customers within blocks of 8, so no customer grows without bound
local HOT = 64 -- the merge storm sends half its requests to these customers: lock contention

local threads, counter = 0, 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

function init(args)
  math.randomseed(run * 100 + thread_id)
  wrk.method = "POST"
  wrk.path = "/identify"
  wrk.headers["Content-Type"] = "application/json"
end

local function email(i) return '"c' .. i .. '@bench.test"' end
local function phone(i) return '"' .. (1000000000 + i) .. '"' end

local function fresh()
  counter = counter + 1
  return string.format("%d%02d%09d", run % 1000000, thread_id, counter)
end

local function partner(i)
  -- another customer of the same block of 8 (customers are numbered from 1)
  local base = (i - 1) - (i - 1) % BLOCK
  local j = base + (((i - 1) % BLOCK + math.random(1, BLOCK - 1)) % BLOCK) + 1
  if j > customers then return i == 1 and 2 or 1 end
  return j
end

local function body(mail, number)
  return '{"email":' .. (mail or "null") .. ',"phoneNumber":' .. (number or "null") .. '}'
end

local function checkout()
  local roll, i = math.random(1, 100), math.random(1, customers)
  if roll <= 70 then return body(email(i), phone(i)) end
  if roll <= 80 then
    if roll <= 75 then return body(email(i), nil) end
    return body(nil, phone(i))
  end
  if roll <= 92 then local n = fresh(); return body('"n' .. n .. '@new.test"', '"9' .. n .. '"') end
  if roll <= 98 then return body(email(i), '"9' .. fresh() .. '"') end
  return body(email(i), phone(partner(i)))
end

local function new_customers()
  local n = fresh()
  return body('"n' .. n .. '@new.test"', '"9' .. n .. '"')
end

local function merge_storm()
  local i = math.random(1, customers)
  if math.random() < 0.5 then i = math.random(1, math.min(HOT, customers)) end
  return body(email(i), phone(partner(i)))
end

local BATCH_ITEMS = 100 -- the batch workload: the checkout mix, this many items per POST /identify/batch

local function batch()
  local items = {}
  for k = 1, BATCH_ITEMS do items[k] = checkout() end
  return '{"contacts":[' .. table.concat(items, ",") .. ']}'
end


local function returning()
  local i = math.random(1, customers)
  return body(email(i), phone(i))
end

local bodies = {
  checkout = checkout, new = new_customers, merge = merge_storm, returning = returning, echo = checkout,
  batch = batch,
}

function request()
  local path = workload == "batch" and "/identify/batch" or "/identify"
  return wrk.format(nil, path, nil, bodies[workload]())
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "socket_errors": %d, "non_2xx": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
