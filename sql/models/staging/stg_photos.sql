-- Every photo file the run saw, valid or not; `problem` says why a photo was quarantined.
with source as (
    select * from {{ source('raw', 'raw_photos') }}
),

final as (
    select
        image,
        split,
        path,
        bytes,
        sha256,
        width,
        height,
        format,
        problem,
        problem is null     as is_valid
    from source
)

select * from final
