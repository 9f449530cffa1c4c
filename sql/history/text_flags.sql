-- Compliance audit of every caption and query: did it describe a child, which rule fired.
create table if not exists text_flags (
    run_id          varchar,
    text_kind       varchar,   -- 'caption' (training) or 'query'
    text_id         varchar,   -- caption_id or query_id
    text            varchar,   -- as written (stored and shown unchanged)
    flagged         boolean,   -- captions: describes a child; queries: gets no photos
    rule            varchar,   -- id of the lexicon rule that fired (compliance/child_lexicon.toml),
                               -- or a query refusal: blank_query, query_too_long, unsupported_language, not_english
    matched         varchar,   -- the exact words (of the normalized form) that fired it
    lexicon_version varchar,   -- sha256 prefix of the lexicon file used
    normalized      varchar,   -- the form that was judged (NFKC, invisible characters removed, look-alikes folded ...)
    reason          varchar    -- one line for the audit: why blocked or allowed
);
-- Warehouses created before these columns existed gain them here.
alter table text_flags add column if not exists normalized varchar;
alter table text_flags add column if not exists reason varchar;
