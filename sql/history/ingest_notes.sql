-- What ingest normalized or repaired in an input it loaded (or quarantined): a byte-order
-- mark at the start of a line, invisible format characters removed from a field, a JPEG
-- loaded without its end-of-image marker.  Not rows of the ledger: a noted line is still
-- counted once, as loaded or quarantined.
create table if not exists ingest_notes (
    run_id   varchar,
    source   varchar,   -- file name, or photo folder ending in '/'
    line_no  bigint,    -- 1-based physical line in the file (null for photos)
    raw_line varchar,   -- the line as read (invalid bytes replaced), or the photo's file name
    note     varchar
)
