-- One relevance target in [0, 1] per judged (photo, caption) pair.
--
-- Formula: a vote-weighted mean of the two kinds of judgment, each first put on 0..1:
--     expert_score = (mean of the three expert scores - 1) / 3
--     crowd_share  = yes votes / all votes
--     target       = (3 * expert_score + crowd_votes * crowd_share) / (3 + crowd_votes)
-- Why: every judge counts once, so a pair seen by three experts and three crowd workers
-- weighs both sources equally, and a pair judged by one source only takes that source's
-- value.  Experts grade on four levels while the crowd votes yes/no, so the expert part
-- carries the finer signal; `n_judges` is kept so a model can weight pairs by how many
-- people stand behind the target.
with experts as (
    select * from {{ ref('stg_expert_judgments') }}
),

crowd as (
    select * from {{ ref('stg_crowd_judgments') }}
),

captions as (
    select * from {{ ref('stg_captions') }}
),

joined as (
    select
        coalesce(experts.image, crowd.image)            as image,
        coalesce(experts.caption_id, crowd.caption_id)  as caption_id,
        experts.expert_1,
        experts.expert_2,
        experts.expert_3,
        experts.expert_mean,
        experts.expert_score,
        crowd.crowd_share,
        crowd.crowd_votes
    from experts
    full outer join crowd
        on experts.image = crowd.image and experts.caption_id = crowd.caption_id
),

weighted as (
    select
        *,
        case when expert_score is null then 0 else 3 end  as expert_votes,
        coalesce(crowd_votes, 0)                          as crowd_weight
    from joined
),

final as (
    select
        weighted.image,
        weighted.caption_id,
        captions.caption_text,
        captions.described_image,
        weighted.expert_1,
        weighted.expert_2,
        weighted.expert_3,
        weighted.expert_mean,
        weighted.crowd_share,
        weighted.crowd_votes,
        (weighted.expert_votes * coalesce(weighted.expert_score, 0)
            + weighted.crowd_weight * coalesce(weighted.crowd_share, 0))
            / (weighted.expert_votes + weighted.crowd_weight)   as target,
        weighted.expert_votes + weighted.crowd_weight           as n_judges,
        weighted.image = captions.described_image               as is_own_description
    from weighted
    -- Judgments of captions whose text is not in train_dataset.csv cannot be learned from.
    join captions using (caption_id)
)

select * from final order by image, caption_id
