-- Train photos the relevance model may see: valid files, not restricted.
with photos as (
    select * from stg_photos where split = 'train' and is_valid
),

final as (
    select photos.image, photos.sha256, photos.path
    from photos
    anti join restricted_train_photos using (image)
)

select * from final order by image
