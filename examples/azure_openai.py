"""Azure OpenAI: the same enrichment against a deployment in your Azure resource.

    export AZURE_OPENAI_ENDPOINT=https://my-resource.openai.azure.com
    export AZURE_OPENAI_API_KEY=...
    python examples/azure_openai.py --deployment gpt-4o-mini

The model name is the *deployment* name. ``OPENAI_API_VERSION`` (or
``--api-version``) picks the API version. From the shell:

    dask-llm run tickets.csv labeled.csv --prompt "Classify: {title}" --column label \
        --model gpt-4o-mini --azure-endpoint "$AZURE_OPENAI_ENDPOINT"
"""

from __future__ import annotations

import argparse
import os

import dask.dataframe as dd
import pandas as pd

import dask_llm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--azure-endpoint", default=os.environ.get("AZURE_OPENAI_ENDPOINT"))
    parser.add_argument("--deployment", required=True, help="the Azure deployment to call")
    parser.add_argument("--api-version", default=None, help="default: OPENAI_API_VERSION, else 2024-10-21")
    parser.add_argument("--rows", type=int, default=50)
    args = parser.parse_args()
    if not args.azure_endpoint:
        parser.error("set AZURE_OPENAI_ENDPOINT or pass --azure-endpoint")

    # The key is read from AZURE_OPENAI_API_KEY here, on this machine, and
    # travels to the workers inside the Endpoint: they need no environment.
    endpoint = dask_llm.Endpoint(azure_endpoint=args.azure_endpoint, api_version=args.api_version)
    tickets = pd.DataFrame({"title": [f"My VM #{i} does not boot" for i in range(args.rows)]})
    out = dask_llm.enrich(
        dd.from_pandas(tickets, npartitions=2),
        prompt="Which cloud service is this ticket about? Answer with one word.\n{title}",
        column="service", model=args.deployment, endpoint=endpoint, threads=8,
        # Azure deployments have their own TPM/RPM quota: stay under it.
        budget=dask_llm.Budget(rpm=600),
    ).compute()  # fmt: skip
    print(out[["title", "service", "service_error"]].head().to_string(index=False))
    print(f"rows: {len(out)}  errors: {int(out['service_error'].notna().sum())}")


if __name__ == "__main__":
    main()
