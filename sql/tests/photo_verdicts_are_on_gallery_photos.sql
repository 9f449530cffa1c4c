-- The run being built judged gallery photos only, each once (relationship photo_flags -> gallery).
select flags.image, count(*) as n_verdicts
from {{ source('history', 'photo_flags') }} as flags
where flags.run_id = '{{ run_id() }}'
group by flags.image
having count(*) <> 1 or flags.image not in (select image from {{ ref('gallery') }})
