-- The law: a train photo that shows a child is never learned from by the relevance model.
-- Fails with every training pair, training photo or bridge positive on a restricted photo.
with restricted as (
    select image from {{ ref('restricted_train_photos') }}
)

select 'training_pairs' as mart, image from {{ ref('training_pairs') }} join restricted using (image)
union all
select 'training_photos', image from {{ ref('training_photos') }} join restricted using (image)
union all
select 'bridge_positives', image from {{ ref('bridge_positives') }} join restricted using (image)
