-- Train photos the relevance model may see: valid files, not restricted.
with photos as (
    select * from {{ ref('stg_photos') }} where split = 'train' and is_valid
),

restricted as (
    select image from {{ ref('restricted_train_photos') }}
),

final as (
    select photos.image, photos.sha256, photos.path
    from photos
    anti join restricted using (image)
)

select * from final order by image
