-- Known matches the bridge learns from: each allowed caption with the allowed photo it
-- was written for (a match by construction, judged or not).
with captions as (
    select * from {{ ref('stg_captions') }}
),

caption_flags as (
    select caption_id from {{ ref('stg_caption_flags') }} where flagged
),

photos as (
    select * from {{ ref('training_photos') }}
),

final as (
    select captions.described_image as image, captions.described_image, captions.caption_id, captions.caption_text
    from captions
    join photos on photos.image = captions.described_image
    anti join caption_flags using (caption_id)
)

select * from final order by image, caption_id
