-- Customer features as one DuckDB query, written independently of segscale's Spark code.
-- Used by tests/test_features.py (correctness) and benchmarks/bench_features.py (speed).
-- Parameters: $snapshot (date), $snapshot_end (timestamp: start of the next day, UTC), $lookback_days.
WITH tx AS (
    SELECT customer_id, (ts AT TIME ZONE 'UTC')::DATE AS day, amount, category, channel, transaction_type
    FROM transactions WHERE ts < $snapshot_end
), purchases AS (
    SELECT * FROM tx WHERE transaction_type = 'purchase'
), purchase_days AS (
    SELECT customer_id, day, sum(amount) AS spend FROM purchases GROUP BY customer_id, day
), gaps AS (
    SELECT customer_id, day - lag(day) OVER (PARTITION BY customer_id ORDER BY day) AS gap FROM purchase_days
), gap_stats AS (
    SELECT customer_id, avg(gap) AS mean_gap, stddev_samp(gap) AS std_gap
    FROM gaps WHERE gap IS NOT NULL GROUP BY customer_id
), bgnbd AS (
    SELECT customer_id, count(*) - 1 AS x, max(day) - min(day) AS t_x, $snapshot - min(day) AS big_t,
           CASE WHEN count(*) > 1 THEN (sum(spend) - arg_min(spend, day)) / (count(*) - 1) END AS zbar
    FROM purchase_days GROUP BY customer_id
), purchase_stats AS (
    SELECT customer_id, count(*) AS n, sum(amount) AS total, max(day) AS last_day, min(day) AS first_day,
           count(DISTINCT category) AS categories,
           avg(CASE WHEN channel IN ('online', 'app') THEN 1.0 ELSE 0.0 END) AS online_share,
           count(*) FILTER (WHERE day > $snapshot - 30) AS p30,
           count(*) FILTER (WHERE day > $snapshot - 90) AS p90,
           count(*) FILTER (WHERE day > $snapshot - 365) AS p365,
           coalesce(sum(amount) FILTER (WHERE day > $snapshot - 30), 0) AS s30,
           coalesce(sum(amount) FILTER (WHERE day > $snapshot - 90), 0) AS s90,
           coalesce(sum(amount) FILTER (WHERE day > $snapshot - 365), 0) AS s365,
           coalesce(sum(amount) FILTER (WHERE day > $snapshot - 180 AND day <= $snapshot - 90), 0) AS s_prev90
    FROM purchases GROUP BY customer_id
), return_stats AS (
    SELECT customer_id, count(*) AS returns FROM tx WHERE transaction_type = 'return' GROUP BY customer_id
), lookback AS (
    SELECT customer_id, count(*) FILTER (WHERE transaction_type = 'purchase') AS frequency,
           sum(CASE WHEN transaction_type = 'purchase' THEN amount ELSE -amount END) AS monetary
    FROM tx WHERE day > $snapshot - $lookback_days GROUP BY customer_id
), events AS (
    SELECT *, (ts AT TIME ZONE 'UTC')::DATE AS day FROM interactions WHERE ts < $snapshot_end
), event_stats AS (
    SELECT customer_id, count(*) AS n, coalesce(sum(cost), 0) AS cost,
           count(*) FILTER (WHERE kind = 'complaint') AS complaints
    FROM events WHERE day > $snapshot - 365 GROUP BY customer_id
), last_score AS (
    SELECT customer_id, satisfaction FROM (
        SELECT customer_id, satisfaction,
               row_number() OVER (PARTITION BY customer_id ORDER BY ts DESC, satisfaction DESC) AS position
        FROM events WHERE satisfaction IS NOT NULL)
    WHERE position = 1
)
SELECT c.customer_id, $snapshot AS snapshot_date,
       ($snapshot - p.last_day)::INTEGER AS recency_days,
       coalesce(l.frequency, 0)::BIGINT AS frequency,
       coalesce(l.monetary, 0)::DOUBLE AS monetary,
       (p.total / p.n)::DOUBLE AS avg_order_value,
       (CASE WHEN c.signup_date <= $snapshot THEN $snapshot - c.signup_date END)::INTEGER AS tenure_days,
       ($snapshot - p.first_day)::INTEGER AS days_since_first_purchase,
       g.mean_gap::DOUBLE AS mean_days_between_purchases,
       g.std_gap::DOUBLE AS std_days_between_purchases,
       coalesce(p.p30, 0)::BIGINT AS purchases_30d, coalesce(p.p90, 0)::BIGINT AS purchases_90d,
       coalesce(p.p365, 0)::BIGINT AS purchases_365d,
       coalesce(p.s30, 0)::DOUBLE AS spend_30d, coalesce(p.s90, 0)::DOUBLE AS spend_90d,
       coalesce(p.s365, 0)::DOUBLE AS spend_365d,
       coalesce(p.s90 - p.s_prev90, 0)::DOUBLE AS spend_trend_90d,
       coalesce(p.categories, 0)::BIGINT AS distinct_categories,
       (coalesce(r.returns, 0) / p.n)::DOUBLE AS return_rate,
       p.online_share::DOUBLE AS online_share,
       coalesce(e.n, 0)::BIGINT AS interactions_365d,
       coalesce(e.cost, 0)::DOUBLE AS interaction_cost_365d,
       coalesce(e.complaints, 0)::BIGINT AS complaints_365d,
       s.satisfaction::INTEGER AS last_satisfaction,
       b.x::BIGINT AS bgnbd_frequency, b.t_x::INTEGER AS bgnbd_recency, b.big_t::INTEGER AS "bgnbd_T",
       b.zbar::DOUBLE AS bgnbd_monetary
FROM customers c
LEFT JOIN purchase_stats p USING (customer_id)
LEFT JOIN gap_stats g USING (customer_id)
LEFT JOIN bgnbd b USING (customer_id)
LEFT JOIN return_stats r USING (customer_id)
LEFT JOIN lookback l USING (customer_id)
LEFT JOIN event_stats e USING (customer_id)
LEFT JOIN last_score s USING (customer_id)
