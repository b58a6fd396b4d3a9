"""The service's routes, one APIRouter a module: meta (the page, /docs, /health, /v1/model), analyze
(/v1/analyze) and track (/v1/track). create_app (agegender/serving/service.py) includes them."""
