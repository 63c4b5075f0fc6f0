-- When the metering service first ran with each configured replica: a replica known only
-- from the configuration (no GPU samples) holds capacity from then, or from its first usage
-- record if that is earlier, not from the start of whatever range is allocated.
CREATE TABLE replica_config_seen (
    replica VARCHAR NOT NULL,
    first_seen TIMESTAMP NOT NULL
);
