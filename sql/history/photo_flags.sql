-- Compliance audit of every gallery photo: the child classifier's score and the threshold.
create table if not exists photo_flags (
    run_id      varchar,
    image       varchar,
    score       double,    -- probability-like score that the photo shows a child
    threshold   double,    -- chosen on training folds for the legal recall floor
    restricted  boolean    -- score >= threshold: never shown in results
)
