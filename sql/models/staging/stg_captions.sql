-- One row per caption: the texts photographers' queries are modelled on.
-- A query_id `<image>#<n>` names the photo the caption was written for.
with source as (
    select * from {{ source('raw', 'raw_train_pairs') }}
),

renamed as (
    select distinct
        query_id                               as caption_id,
        query_text                             as caption_text,
        split_part(query_id, '#', 1)           as described_image,
        cast(split_part(query_id, '#', 2) as integer) as caption_n
    from source
),

final as (
    select * from renamed
)

select * from final
