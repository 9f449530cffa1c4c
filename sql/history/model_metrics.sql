-- Every measured figure of every run: heads' agreement with judges, retrieval, compliance.
create table if not exists model_metrics (
    run_id    varchar,
    component varchar,   -- 'relevance' or 'photo_guard'
    head      varchar,   -- bridge | lgbm | mlp | chosen | guard
    protocol  varchar,   -- how it was measured (see sql/README.md)
    metric    varchar,
    value     double
)
