-- wrk script: each request registers a new person (unique email and NIK).
local counter = 0
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  created = 0
  other = 0
end

request = function()
  counter = counter + 1
  local n = tid * 10000000 + counter
  local day = (n % 28) + 1
  local month = (math.floor(n / 28) % 12) + 1
  local year = math.floor(n / 336) % 80 + 1940
  local serial = math.floor(n / 26880) % 9999 + 1
  local yy = year % 100
  local nik = string.format("327301%02d%02d%02d%04d", day, month, yy, serial)
  local body = string.format(
    '{"name":"Bench User","email":"u%d@example.org","nik":"%s","birth_date":"%04d-%02d-%02d","phone":"+628123456789"}',
    n, nik, year, month, day)
  return wrk.format("POST", "/api/register", {["Content-Type"] = "application/json"}, body)
end

response = function(status, headers, body)
  if status == 201 then created = created + 1 else other = other + 1 end
end

done = function(summary, latency, requests)
  local c, o = 0, 0
  for _, t in ipairs(threads) do
    c = c + t:get("created")
    o = o + t:get("other")
  end
  io.write(string.format("CREATED %d OTHER %d\n", c, o))
  for _, p in ipairs({50, 90, 99}) do
    io.write(string.format("P%d %.3f\n", p, latency:percentile(p) / 1000.0))
  end
end
