{#- Every non-null value of the column lies in [min, max] (both ends included). -#}
{% test between(model, column_name, min, max) %}
select {{ column_name }} as out_of_range
from {{ model }}
where {{ column_name }} < {{ min }} or {{ column_name }} > {{ max }}
{% endtest %}
