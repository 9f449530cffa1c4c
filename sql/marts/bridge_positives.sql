-- Known matches the bridge learns from: each allowed caption with the allowed photo it
-- was written for (a match by construction, judged or not).
with captions as (
    select * from stg_captions
),

caption_flags as (
    select text_id as caption_id from text_flags
    where run_id = getvariable('run_id') and text_kind = 'caption' and flagged
),

final as (
    select captions.caption_image as image, captions.caption_image, captions.caption_id, captions.caption_text
    from captions
    join training_photos on training_photos.image = captions.caption_image
    anti join caption_flags using (caption_id)
)

select * from final order by image, caption_id
