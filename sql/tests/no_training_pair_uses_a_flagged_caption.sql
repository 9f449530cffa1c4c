-- The law: a caption that describes a child is never learned from.  Fails with every
-- training pair or bridge positive whose caption this run flagged.
with flagged as (
    select caption_id from {{ ref('stg_caption_flags') }} where flagged
)

select 'training_pairs' as mart, image, caption_id
from {{ ref('training_pairs') }} join flagged using (caption_id)
union all
select 'bridge_positives', image, caption_id
from {{ ref('bridge_positives') }} join flagged using (caption_id)
