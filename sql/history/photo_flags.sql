-- Compliance audit of every gallery photo: each signal's value, the combined score, the
-- thresholds, the decision and the signal that decided it (docs/compliance.md, "The photo guard").
create table if not exists photo_flags (
    run_id      varchar,
    image       varchar,
    score       double,    -- combined P(child) from the image and face signals; null when the combiner did not run
    threshold   double,    -- the combined score's threshold, chosen on training folds for the legal recall floor
    restricted  boolean    -- never shown: a flagged description, a missing signal, or score >= threshold
);
-- Added with the multi-signal guard (older warehouses get the columns on their next run).
alter table photo_flags add column if not exists deciding_signal varchar;           -- description | missing_signal | image_classifier | face_age
alter table photo_flags add column if not exists image_score double;                -- the image classifier's score
alter table photo_flags add column if not exists image_threshold double;            -- its own legal threshold (what it alone would decide)
alter table photo_flags add column if not exists face_gate double;                  -- faces are looked at only for image_score >= face_gate
alter table photo_flags add column if not exists face_checked boolean;              -- image_score >= face_gate
alter table photo_flags add column if not exists n_faces integer;                   -- faces found; null = not checked or not analysable
alter table photo_flags add column if not exists youngest_age double;               -- apparent age of the youngest face (years)
alter table photo_flags add column if not exists youngest_age_confidence double;    -- that estimate's top age-class probability
alter table photo_flags add column if not exists faces_under_16 integer;            -- faces whose apparent age is under 16
alter table photo_flags add column if not exists n_descriptions integer;            -- the photo's own descriptions (<image>#<n>)
alter table photo_flags add column if not exists descriptions_flagged integer;      -- how many of them the text filter flagged
alter table photo_flags add column if not exists description_id varchar;            -- the first flagged one
alter table photo_flags add column if not exists description_rule varchar           -- the lexicon rule that flagged it
