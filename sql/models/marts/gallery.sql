-- The photos search results are drawn from: the test photos listed in test_images.csv
-- that passed validation.
with listed as (
    select distinct image from {{ source('raw', 'raw_test_images') }}
),

valid_photos as (
    select * from {{ ref('stg_photos') }} where split = 'test' and is_valid
),

final as (
    select
        valid_photos.image,
        valid_photos.sha256,
        valid_photos.path,
        valid_photos.width,
        valid_photos.height
    from valid_photos
    join listed using (image)
)

select * from final order by image
