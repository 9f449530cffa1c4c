-- The saved queries the nightly job answers: 500 test captions, each written for one gallery photo.
with source as (
    select * from {{ source('raw', 'raw_test_queries') }}
),

renamed as (
    select
        query_id,
        query_text,
        image               as described_image
    from source
),

final as (
    select * from renamed
)

select * from final
