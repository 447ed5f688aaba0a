# Kubernetes on k3d (needs docker, k3d and kubectl on your machine). Included by the top-level Makefile.
K3D_CLUSTER ?= supportmesh
IMAGE       ?= supportmesh:0.1.0
NAMESPACE   ?= supportmesh
OVERLAY     ?= k8s/overlays/k3d

.PHONY: k3d-up k3d-build k3d-deploy k3d-chaos k3d-down k3d-manifests

k3d-up:  ## a local cluster with the UIs mapped to localhost
	k3d cluster create $(K3D_CLUSTER) --agents 1 \
	  -p "8000:8000@loadbalancer" -p "3000:3000@loadbalancer" \
	  -p "16686:16686@loadbalancer" -p "9090:9090@loadbalancer"

k3d-build:  ## build the image (on BASE_IMAGE when set) and import it into the cluster
	docker build $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) -t $(IMAGE) .
	k3d image import $(IMAGE) -c $(K3D_CLUSTER)

k3d-deploy:  ## apply the manifests (creating the token key, bus credentials and Grafana's admin Secrets once) and wait
	kubectl create namespace $(NAMESPACE) --dry-run=client -o yaml | kubectl apply -f -
	# The gateway's token key (README "Security model"): created once, kept across deploys.
	kubectl -n $(NAMESPACE) get secret supportmesh-auth >/dev/null 2>&1 || kubectl -n $(NAMESPACE) create secret \
	  generic supportmesh-auth --from-literal=auth-secret="$$(openssl rand -base64 48)"
	kubectl -n $(NAMESPACE) get secret grafana-admin >/dev/null 2>&1 || \
	  kubectl -n $(NAMESPACE) create secret generic grafana-admin --from-literal=admin-user=admin \
	  --from-literal=admin-password="$$(head -c 24 /dev/urandom | base64)"
	# The bus credentials (README "Credentials"): NATS users and Redis ACL users, created once, kept across deploys.
	kubectl -n $(NAMESPACE) get secret supportmesh-nats-auth >/dev/null 2>&1 || \
	  $(BIN)/supportmesh secrets --namespace $(NAMESPACE) | kubectl apply -f -
	kubectl apply -k $(OVERLAY)
	kubectl -n $(NAMESPACE) rollout status statefulset/nats --timeout=180s
	kubectl -n $(NAMESPACE) rollout status statefulset/redis --timeout=180s
	for d in $$(kubectl -n $(NAMESPACE) get deploy -o name); do \
	  kubectl -n $(NAMESPACE) rollout status $$d --timeout=300s || exit 1; done
	@echo "grafana admin password: kubectl -n $(NAMESPACE) get secret grafana-admin -o jsonpath='{.data.admin-password}' | base64 -d"
	@echo "widget http://localhost:8000  grafana http://localhost:3000  jaeger http://localhost:16686  prometheus http://localhost:9090"

k3d-chaos:  ## delete random actor pods every 5 s for a minute
	$(BIN)/supportmesh chaos --target k8s --namespace $(NAMESPACE) \
	  --selector app.kubernetes.io/component=actor --interval 5 --duration 60

k3d-manifests:  ## print the rendered manifests (no cluster needed)
	$(BIN)/kubectl kustomize $(OVERLAY)

k3d-down:
	k3d cluster delete $(K3D_CLUSTER)
