-- put_policy.lua: store a policy document for every throttle replica, with a new version.
-- KEYS[1] policy  hash {version, text}
-- ARGV[1] policy text (TOML)
-- Returns the new version (integer).
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'text', ARGV[1])
return version
