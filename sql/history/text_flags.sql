-- Compliance audit of every caption and query: did it describe a child, which rule fired.
create table if not exists text_flags (
    run_id          varchar,
    text_kind       varchar,   -- 'caption' (training) or 'query'
    text_id         varchar,   -- caption_id or query_id
    text            varchar,
    flagged         boolean,
    rule            varchar,   -- id of the lexicon rule that fired (compliance/child_lexicon.toml)
    matched         varchar,   -- the exact words that fired it
    lexicon_version varchar    -- sha256 prefix of the lexicon file used
)
