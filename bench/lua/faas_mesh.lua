-- The benchmark's Lua variant: the same visible work as faas-mesh-filter's path rewrite and
-- headers, in Envoy's Lua filter (envoy.filters.http.lua, inline), for a cost comparison.
--   request:  /function/env/<rest>?q -> /<rest>?q; X-Call-Id (a UUIDv4) unless the caller sent
--             one; X-Start-Time (unix nanoseconds, millisecond resolution)
--   response: X-Call-Id and X-Duration-Seconds
-- The per-request state (call id, start) travels in the stream's dynamic metadata.
math.randomseed(os.time())

function envoy_on_request(h)
  local headers = h:headers()
  local path = headers:get(":path")
  local rest = string.match(path, "^/function/env(.*)$")
  if rest ~= nil and (rest == "" or string.match(rest, "^[/?]")) then
    if rest == "" or string.sub(rest, 1, 1) == "?" then rest = "/" .. rest end
    headers:replace(":path", rest)
  end
  local id = headers:get("x-call-id")
  if id == nil then
    id = string.format("%08x-%04x-4%03x-%04x-%04x%08x", math.random(0, 0xffffffff),
      math.random(0, 0xffff), math.random(0, 0xfff), math.random(0x8000, 0xbfff),
      math.random(0, 0xffff), math.random(0, 0xffffffff))
    headers:replace("x-call-id", id)
  end
  local start = h:timestamp()
  headers:replace("x-start-time", string.format("%d000000", start))
  h:streamInfo():dynamicMetadata():set("bench", "call", {id = id, start = start})
end

function envoy_on_response(h)
  local call = h:streamInfo():dynamicMetadata():get("bench")["call"]
  h:headers():replace("x-call-id", call.id)
  h:headers():replace("x-duration-seconds",
    string.format("%.6f", (h:timestamp() - call.start) / 1000))
end
