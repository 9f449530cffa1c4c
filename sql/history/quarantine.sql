-- Every input row or photo that was not loaded, with the reason a person can act on.
create table if not exists quarantine (
    run_id   varchar,
    source   varchar,   -- file name, or photo folder ending in '/'
    line_no  bigint,    -- 1-based physical line in the file (null for photos)
    raw_line varchar,   -- the line as read (invalid bytes replaced), or the photo's file name
    reason   varchar
)
