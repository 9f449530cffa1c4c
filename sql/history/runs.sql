-- One row per reindex run: when, on what, with which settings, and how it ended.
create table if not exists runs (
    run_id          varchar primary key,
    started_at      timestamp,
    finished_at     timestamp,
    data_dir        varchar,
    top_k           integer,
    head            varchar,   -- the head that scored this run's results
    train_fingerprint varchar, -- hash of the training data and settings (models are reused when equal)
    images_embedded integer,   -- photos embedded this run (the rest came from the cache)
    texts_embedded  integer,
    wall_seconds    double,
    summary_json    varchar
)
