-- The edge's request guard: INVALID_ARGUMENT for what a request itself gets wrong, before the
-- gRPC-JSON transcoder and before any gateway, so that no client mistake reaches a gateway as
-- a reset, a hang or an INTERNAL (issue 13, parts 5 and 6; docs/regions.md has the table):
--   every request   malformed grpc-timeout, grpc-encoding, grpc-previous-rpc-attempts or
--                   binary (-bin) header, a text header that is not UTF-8, or a header gRPC
--                   keeps for responses: refused;
--                   OpenCensus grpc-trace-bin and grpc-tags-bin: removed
--   gRPC            a content type other than protobuf, no te: trailers, a body that is not
--                   whole length-prefixed messages, two messages to a method that takes one
--   JSON            a body field its message lacks, which the transcoder would drop silently
-- gRPC and JSON are told apart by Envoy's own rule, the transcoder's (is_grpc below). A refused
-- gRPC request gets gRPC's trailers-only answer (grpc-status 3), a JSON one HTTP 400 with
-- {"code": 3, "message": ...}; each message starts with the header, "body" or the field.
--
-- services.edge.render prepends the generated schema, from the descriptor set's google.api.http rules:
--   ROUTES[method][path] = the body's kind (below) for exact paths
--   PATTERNS = { {method, anchored lua pattern, kind}, ... } for templated paths
--   MESSAGES[message][json key] = kind, where kind is
--     "message:<name>"  a message field (singular or repeated): its objects are checked too
--     "map:<name>"      a map whose values are messages: keys open, values checked
--     anything else     scalars, enums, scalar maps, well-known types: not looked into
--   SINGLE_MESSAGE[/package.Service/Method] = true for the methods that take one request message
-- A JSON body that does not parse is left to the transcoder, which answers 400 itself.
--
-- The parser reads JSON as the transcoder's parser (protobuf's JsonStreamParser) does, which is
-- more than RFC 8259: unquoted keys, single-quoted strings, raw control characters and any
-- escape in strings, trailing commas, \v and \f as whitespace, numbers like `1.`. A strict parser
-- would let `{query: "x", bogus: 1}` through to a transcoder that accepts it and drops `bogus`.
-- Everything it reads must be read here too; reading more only turns one 400 into another.

local byte, sub, find, match, char = string.byte, string.sub, string.find, string.match, string.char
local concat, floor = table.concat, math.floor

-- The transcoder's parser rejects bodies nested 100 levels or so; deeper ones are left to it.
local MAX_DEPTH = 200
-- Names echoed back in an error are cut to this many bytes.
local MAX_ECHO = 256

local SCALAR = {}
-- Any other escaped character stands for itself.
local ESCAPES = { [98] = "\b", [102] = "\f", [110] = "\n", [114] = "\r", [116] = "\t" }
local REPLACEMENT = "\239\191\189" -- U+FFFD, for a lone surrogate

local function fail()
  error("malformed JSON", 0)
end

local function skip_ws(s, i)
  local _, e = find(s, "^%s*", i)
  return e + 1
end

local function utf8(cp)
  if cp < 0x80 then
    return char(cp)
  elseif cp < 0x800 then
    return char(0xC0 + floor(cp / 0x40), 0x80 + cp % 0x40)
  elseif cp < 0x10000 then
    return char(0xE0 + floor(cp / 0x1000), 0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
  end
  return char(0xF0 + floor(cp / 0x40000), 0x80 + floor(cp / 0x1000) % 0x40,
    0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
end

local function hex4(s, i)
  local hex = sub(s, i, i + 3)
  if not find(hex, "^%x%x%x%x$") then
    fail()
  end
  return tonumber(hex, 16)
end

-- Runs of characters that need no decoding, in a string quoted with " or with '.
local PLAIN = { [34] = '^[^"\\]*', [39] = "^[^'\\]*" }

-- A string starting at s[i], its opening quote; returns its decoded text and the index after it.
local function parse_string(s, i)
  local quote = byte(s, i)
  local plain = PLAIN[quote]
  local parts, n, j = {}, 0, i + 1
  while true do
    local _, e = find(s, plain, j)
    if e >= j then
      n = n + 1
      parts[n] = sub(s, j, e)
    end
    j = e + 1
    local c = byte(s, j)
    if c == quote then
      return concat(parts), j + 1
    elseif c ~= 92 then
      fail() -- the input ended inside the string
    end
    local escape = byte(s, j + 1)
    if escape == 117 then
      local cp = hex4(s, j + 2)
      j = j + 6
      local text
      if cp >= 0xD800 and cp <= 0xDBFF and sub(s, j, j + 1) == "\\u" then
        local low = hex4(s, j + 2)
        if low >= 0xDC00 and low <= 0xDFFF then
          text = utf8(0x10000 + (cp - 0xD800) * 0x400 + (low - 0xDC00))
          j = j + 6
        end
      end
      n = n + 1
      parts[n] = text or (cp >= 0xD800 and cp <= 0xDFFF and REPLACEMENT) or utf8(cp)
    elseif escape then
      n = n + 1
      parts[n] = ESCAPES[escape] or char(escape)
      j = j + 2
    else
      fail()
    end
  end
end

-- A number: RFC 8259's and the looser forms the transcoder reads (`1.`); the transcoder judges it.
local function parse_number(s, i)
  local _, e = find(s, "^%-?%d[%w%.%+%-]*", i)
  if not e then
    fail()
  end
  return SCALAR, e + 1
end

local function parse_literal(s, i, word)
  if sub(s, i, i + #word - 1) ~= word then
    fail()
  end
  return SCALAR, i + #word
end

local parse_value

-- A key: a string, or unquoted as the transcoder allows (`{query: "x"}`).
local function parse_key(s, i)
  local c = byte(s, i)
  if c == 34 or c == 39 then
    return parse_string(s, i)
  end
  local _, e = find(s, "^[%a_$][%w_$]*", i)
  if not e then
    fail()
  end
  return sub(s, i, e), e + 1
end

-- Objects keep their keys in order, duplicates included: { keys = {...}, values = {...}, n = n }.
-- A comma may follow the last entry of an object or an array, as the transcoder allows.
local function parse_object(s, i, depth)
  local object = { keys = {}, values = {}, n = 0 }
  i = skip_ws(s, i + 1)
  if byte(s, i) == 125 then
    return object, i + 1
  end
  while true do
    local key, value
    key, i = parse_key(s, i)
    i = skip_ws(s, i)
    if byte(s, i) ~= 58 then
      fail()
    end
    value, i = parse_value(s, i + 1, depth)
    object.n = object.n + 1
    object.keys[object.n], object.values[object.n] = key, value
    i = skip_ws(s, i)
    local c = byte(s, i)
    if c == 125 then
      return object, i + 1
    elseif c ~= 44 then
      fail()
    end
    i = skip_ws(s, i + 1)
    if byte(s, i) == 125 then
      return object, i + 1
    end
  end
end

local function parse_array(s, i, depth)
  local array = { items = {} }
  i = skip_ws(s, i + 1)
  if byte(s, i) == 93 then
    return array, i + 1
  end
  local n = 0
  while true do
    n = n + 1
    array.items[n], i = parse_value(s, i, depth)
    i = skip_ws(s, i)
    local c = byte(s, i)
    if c == 93 then
      return array, i + 1
    elseif c ~= 44 then
      fail()
    end
    i = skip_ws(s, i + 1)
    if byte(s, i) == 93 then
      return array, i + 1
    end
  end
end

parse_value = function(s, i, depth)
  i = skip_ws(s, i)
  local c = byte(s, i)
  if c == 123 or c == 91 then
    if depth >= MAX_DEPTH then
      fail()
    end
    if c == 123 then
      return parse_object(s, i, depth + 1)
    end
    return parse_array(s, i, depth + 1)
  elseif c == 34 or c == 39 then
    local _, j = parse_string(s, i)
    return SCALAR, j
  elseif c == 116 then
    return parse_literal(s, i, "true")
  elseif c == 102 then
    return parse_literal(s, i, "false")
  elseif c == 110 then
    return parse_literal(s, i, "null")
  end
  return parse_number(s, i)
end

-- The whole text as one JSON value; raises on anything else.
local function parse(s)
  local value, i = parse_value(s, 1, 0)
  if skip_ws(s, i) <= #s then
    fail()
  end
  return value
end

local check_message

-- The path of the first unknown field under `value`, a value of a field of this kind; or nil.
local function check_kind(value, kind, path)
  local message = match(kind, "^message:(.+)$")
  if message then
    if value.items then
      for index, item in ipairs(value.items) do
        local found = check_message(item, message, path .. "[" .. (index - 1) .. "]")
        if found then
          return found
        end
      end
      return nil
    end
    return check_message(value, message, path)
  end
  local values = match(kind, "^map:(.+)$")
  if values and value.keys then
    for k = 1, value.n do
      local found = check_message(value.values[k], values, path .. "[" .. value.keys[k] .. "]")
      if found then
        return found
      end
    end
  end
  return nil
end

-- Anything but an object (null, a mistyped value) is the transcoder's to judge.
check_message = function(value, message, path)
  local fields = MESSAGES[message]
  if not fields or not value.keys then
    return nil
  end
  for k = 1, value.n do
    local key = value.keys[k]
    local here = path == "" and key or path .. "." .. key
    local kind = fields[key]
    if kind == nil then
      return here
    end
    local found = check_kind(value.values[k], kind, here)
    if found then
      return found
    end
  end
  return nil
end

-- The bounds of the second byte of a sequence, where tighter than 0x80-0xBF (RFC 3629).
local SECOND = { [0xE0] = { 0xA0, 0xBF }, [0xED] = { 0x80, 0x9F }, [0xF0] = { 0x90, 0xBF },
  [0xF4] = { 0x80, 0x8F } }

local function valid_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = byte(s, i)
    local size = c < 0x80 and 1 or (c >= 0xC2 and c <= 0xDF) and 2
      or (c >= 0xE0 and c <= 0xEF) and 3 or (c >= 0xF0 and c <= 0xF4) and 4
    if not size then
      return false
    end
    for k = i + 1, i + size - 1 do
      local d = byte(s, k)
      local bounds = k == i + 1 and SECOND[c] or { 0x80, 0xBF }
      if not d or d < bounds[1] or d > bounds[2] then
        return false
      end
    end
    i = i + size
  end
  return true
end

-- A field path to echo back: cut to MAX_ECHO bytes.
local function echo(s)
  if #s > MAX_ECHO then
    return sub(s, 1, MAX_ECHO) .. "..."
  end
  return s
end

-- `s` as a JSON string literal, bytes of invalid UTF-8 as "?".
local function json_string(s)
  if not valid_utf8(s) then
    s = s:gsub("[\128-\255]", "?")
  end
  local escaped = s:gsub('[%z\1-\31"\\]', function(c)
    if c == '"' or c == "\\" then
      return "\\" .. c
    end
    return string.format("\\u%04x", byte(c))
  end)
  return '"' .. escaped .. '"'
end

-- The kind of the body a transcoded route takes, or nil.
local function body_kind(method, path)
  local exact = ROUTES[method]
  if exact and exact[path] then
    return exact[path]
  end
  for _, route in ipairs(PATTERNS) do
    if route[1] == method and find(path, route[2]) then
      return route[3]
    end
  end
  return nil
end

-- The path of the first unknown field of a JSON request's body, or nil (no body route, no body,
-- or a body that does not parse: the transcoder answers those itself).
local function unknown_field(request_handle, headers)
  local method = headers:get(":method")
  -- The transcoder ignores the query string and trailing slashes: /v1/generate/ is /v1/generate.
  local path = match(headers:get(":path") or "", "^[^?#]*")
  local kind = body_kind(method, match(path, "^(.-)/*$"))
  if not kind then
    return nil
  end
  local body = request_handle:body()
  if not body or body:length() == 0 then
    return nil
  end
  local ok, value = pcall(parse, body:getBytes(0, body:length()))
  if not ok then
    return nil
  end
  return check_kind(value, kind, "")
end

-- Envoy's own rule for "this request is gRPC" (source/common/grpc/common.cc,
-- Grpc::Common::hasGrpcContentType), which the transcoder uses to pass a request through
-- untranscoded: content-type exactly "application/grpc" or starting with "application/grpc+",
-- case-sensitive, no parameters. Everything else (application/grpc-web, Application/GRPC,
-- application/grpc;charset=utf-8, text/plain, none) is transcoded as JSON, and checked as JSON.
local GRPC = "application/grpc"

local function is_grpc(content_type)
  return content_type == GRPC or sub(content_type or "", 1, #GRPC + 1) == GRPC .. "+"
end

-- The gRPC content types the gateway serves: protobuf only.
local SERVED = { [GRPC] = true, [GRPC .. "+proto"] = true }

-- grpc-encoding values the gateway's gRPC core decodes; any other fails the call with INTERNAL.
local ENCODINGS = { identity = true, deflate = true, gzip = true }

-- Headers gRPC defines for responses or for the gRPC library's own use (grpc/grpc
-- src/core/call/metadata_batch.h): in a request they are malformed, and the gateway's core fails
-- the call with INTERNAL for several of them (grpc-status: x, grpc-internal-encoding-request).
local RESPONSE_ONLY = {
  ["grpc-status"] = true,
  ["grpc-message"] = true,
  ["grpc-status-details-bin"] = true,
  ["grpc-retry-pushback-ms"] = true,
  ["grpc-server-stats-bin"] = true,
  ["grpc-internal-encoding-request"] = true,
  ["grpclb_client_stats"] = true,
  ["endpoint-load-metrics-bin"] = true,
  ["lb-token"] = true,
  ["lb-cost-bin"] = true,
}

-- OpenCensus context, which the mesh does not use (it traces with W3C traceparent) and the
-- gateway's core rejects in some valid base64 forms: removed, never forwarded.
local REMOVED = { "grpc-trace-bin", "grpc-tags-bin" }

local BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local BASE64_VALUE = {}
for k = 1, #BASE64 do
  BASE64_VALUE[byte(BASE64, k)] = k - 1
end

-- Base64 as the gateway's core reads a binary (-bin) header: the standard alphabet, padded or
-- not, not empty, and the bits the last character does not fill all zero.
local function valid_base64(value)
  local data, pad = match(value, "^([%w+/]*)(=*)$")
  if not data or data == "" then
    return false
  end
  local rest = #data % 4
  if rest == 1 or (#pad > 0 and (rest == 0 or (#data + #pad) % 4 ~= 0)) then
    return false
  end
  return rest == 0 or BASE64_VALUE[byte(data, #data)] % (rest == 2 and 16 or 4) == 0
end

-- What is wrong with one request header, or nil; the gRPC rules of PROTOCOL-HTTP2.md
-- (grpc/grpc doc) where they are stricter than the gateway's core, else the core's.
local function header_problem(key, value)
  if RESPONSE_ONLY[key] then
    return "a response header; a request may not carry it"
  elseif key == "grpc-timeout" then
    -- TimeoutValue TimeoutUnit: 1 to 8 ASCII digits, then one of H M S m u n.
    if not find(value, "^%d%d?%d?%d?%d?%d?%d?%d?[HMSmun]$") then
      return "must be 1 to 8 digits and a unit (H, M, S, m, u, n), like 30S or 500m"
    end
  elseif key == "grpc-encoding" then
    if not ENCODINGS[value] then
      return "must be identity, deflate or gzip"
    end
  elseif key == "grpc-previous-rpc-attempts" then
    if not find(value, "^%d+$") or tonumber(value) > 4294967295 then
      return "must be a count"
    end
  elseif sub(key, -4) == "-bin" then
    if not valid_base64(value) then
      return "a binary header must be base64"
    end
  elseif not valid_utf8(value) then
    -- The gateway's gRPC core logs such a value whole, at ERROR, before anything reads it:
    -- a key or a note in it would reach the log in clear. Never echoed back either.
    return "its value must be UTF-8 text"
  end
  return nil
end

-- The first header a request may not carry as it is, as "name: why", or nil. Removes REMOVED.
local function headers_problem(headers)
  for key, value in pairs(headers) do
    local problem = header_problem(key, value)
    if problem then
      return key .. ": " .. problem
    end
  end
  for _, key in ipairs(REMOVED) do
    headers:remove(key)
  end
  return nil
end

-- How many length-prefixed messages a gRPC body holds (PROTOCOL-HTTP2.md: Compressed-Flag,
-- 4-byte big-endian Message-Length, Message), or nil and why it is malformed. The gateway's core
-- waits for the rest of a cut message until the deadline, so a malformed body never reaches it.
local function count_messages(body, compressed)
  local i, n, size = 1, 0, #body
  while i <= size do
    if size - i < 4 then
      return nil, "ends inside a message's 5-byte prefix"
    end
    local flag = byte(body, i)
    local b1, b2, b3, b4 = byte(body, i + 1, i + 4)
    local length = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
    if flag > 1 or (flag == 1 and not compressed) then
      return nil, "compressed-flag " .. flag .. " with grpc-encoding " .. (compressed or "identity")
    elseif size - i - 4 < length then
      return nil, "a message of " .. length .. " bytes is cut short"
    end
    i, n = i + 5 + length, n + 1
  end
  return n
end

-- What is wrong with a gRPC request, as "name: why", or nil.
local function grpc_problem(request_handle, headers, content_type)
  if not SERVED[content_type] then
    return "content-type: " .. echo(content_type) .. " is not served; use " .. GRPC
      .. " or " .. GRPC .. "+proto (protobuf), or JSON"
  elseif headers:get("te") ~= "trailers" then
    return "te: a gRPC request must carry te: trailers"
  end
  -- Read before body(): the headers object is out of scope once the script has yielded.
  local encoding = headers:get("grpc-encoding")
  local method = match(headers:get(":path") or "", "^[^?]*")
  local body = request_handle:body()
  local bytes = body and body:getBytes(0, body:length()) or ""
  local n, why = count_messages(bytes, encoding ~= "identity" and encoding or nil)
  if not n then
    return "body: " .. why
  end
  if n == 0 then
    return "body: a gRPC request must carry a message"
  elseif n > 1 and SINGLE_MESSAGE[method] then
    return "body: " .. sub(method, 2) .. " takes one message; the request has " .. n
  end
  return nil
end

-- grpc-message is percent-encoded: bytes outside printable ASCII, and "%" itself.
local function percent_encode(s)
  return (s:gsub("[^ -$&-~]", function(c)
    return string.format("%%%02X", byte(c))
  end))
end

-- INVALID_ARGUMENT: in gRPC's own form for a gRPC request (trailers-only: HTTP 200, grpc-status,
-- grpc-message), else as the transcoder's JSON errors are (HTTP 400, {"code": 3, "message": ...}).
local function refuse(request_handle, grpc, message)
  if grpc then
    request_handle:respond({
      [":status"] = "200",
      ["content-type"] = GRPC,
      ["grpc-status"] = "3",
      ["grpc-message"] = percent_encode(message),
    })
  else
    request_handle:respond(
      { [":status"] = "400", ["content-type"] = "application/json" },
      '{"code":3,"message":' .. json_string(message) .. "}"
    )
  end
end

function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  local content_type = headers:get("content-type")
  local grpc = is_grpc(content_type)
  local problem = headers_problem(headers)
  if not problem and grpc then
    problem = grpc_problem(request_handle, headers, content_type)
  end
  if not problem and not grpc then
    local field = unknown_field(request_handle, headers)
    problem = field and echo(field) .. ": unknown field"
  end
  if problem then
    refuse(request_handle, grpc, problem)
  end
end
