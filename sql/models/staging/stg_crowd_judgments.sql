-- One row per (photo, caption) judged by the crowd: yes / no votes on "does the caption describe the photo?".
with source as (
    select * from {{ source('raw', 'raw_crowd_annotations') }}
),

renamed as (
    select
        image,
        query_id                    as caption_id,
        crowd_share,
        crowd_yes,
        crowd_no,
        crowd_yes + crowd_no        as crowd_votes
    from source
),

final as (
    select * from renamed
)

select * from final
