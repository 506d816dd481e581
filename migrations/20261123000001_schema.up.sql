-- spot-canvas schema: trading pairs and live candles.
-- Amounts are unconstrained NUMERIC: exact for prices with increments below 1e-8 and for
-- daily volumes above 1e12 (DECIMAL(20,10) overflows on the latter).

CREATE TYPE granularity AS ENUM (
    'ONE_MINUTE', 'FIVE_MINUTES', 'FIFTEEN_MINUTES', 'THIRTY_MINUTES',
    'ONE_HOUR', 'TWO_HOURS', 'SIX_HOURS', 'ONE_DAY'
);

CREATE TABLE trading_pairs (
    exchange         TEXT        NOT NULL,
    product_id       TEXT        NOT NULL,
    base             TEXT        NOT NULL,
    quote            TEXT        NOT NULL,
    status           TEXT        NOT NULL,
    product_type     TEXT        NOT NULL DEFAULT 'SPOT',
    trading_disabled BOOLEAN     NOT NULL DEFAULT FALSE,
    base_min_size    NUMERIC,
    base_max_size    NUMERIC,
    base_increment   NUMERIC,
    price_increment  NUMERIC,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (exchange, product_id)
);

-- No surrogate key: a hypertable's unique keys must include "timestamp".
CREATE TABLE live_candles (
    exchange        TEXT        NOT NULL,
    product_id      TEXT        NOT NULL,
    granularity     granularity NOT NULL,
    "timestamp"     TIMESTAMPTZ NOT NULL,
    open            NUMERIC     NOT NULL,
    high            NUMERIC     NOT NULL,
    low             NUMERIC     NOT NULL,
    close           NUMERIC     NOT NULL,
    volume          NUMERIC     NOT NULL,
    -- Unknown (NULL) for candles taken from Coinbase's REST API.
    trade_count     BIGINT,
    buy_volume      NUMERIC,
    revision        INTEGER     NOT NULL DEFAULT 0,
    -- Orders the updates of one row (bytewise): a lower version never overwrites a higher.
    version         BYTEA       NOT NULL,
    complete        BOOLEAN     NOT NULL DEFAULT FALSE,
    backfilled      BOOLEAN     NOT NULL DEFAULT FALSE,
    last_trade_time TIMESTAMPTZ,
    last_update     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, product_id, granularity, "timestamp")
) WITH (fillfactor = 70); -- room on each page for HOT updates of live candles

CREATE INDEX live_candles_key_timestamp_desc
    ON live_candles (exchange, product_id, granularity, "timestamp" DESC);

-- TimescaleDB where the extension can be created (not on plain PostgreSQL or Cloud SQL):
-- 1-day chunks, compression of chunks older than 7 days (far outside the revision window).
DO $$
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'timescaledb is not available (%): live_candles stays a plain table', SQLERRM;
    END;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE $q$SELECT create_hypertable('live_candles', 'timestamp',
            chunk_time_interval => INTERVAL '1 day', migrate_data => TRUE)$q$;
        EXECUTE $q$ALTER TABLE live_candles SET (timescaledb.compress,
            timescaledb.compress_segmentby = 'exchange, product_id, granularity')$q$;
        EXECUTE $q$SELECT add_compression_policy('live_candles', INTERVAL '7 days')$q$;
    END IF;
END
$$;
