package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// apiTimeout bounds one page request; a create or rotation waits for the
// operator within it.
const apiTimeout = time.Minute

// maxNameLength is the API's bound on an ApiKey's name.
const maxNameLength = 63

// The actions a row may offer; the page asks for them by these names.
const (
	actionRevoke  = "revoke"
	actionRotate  = "rotate"
	actionSuspend = "suspend"
	actionResume  = "resume"
	actionScopes  = "scopes"
)

// scopeName is the API's rule for a scope, checked here too so that the
// page's request is refused with a reason before it reaches the API server.
var scopeName = regexp.MustCompile(authv1alpha1.ScopePattern)

// keyView is one row of the API Keys table.
type keyView struct {
	Name        string     `json:"name"`
	Description string     `json:"description,omitempty"`
	KeyHint     string     `json:"keyHint,omitempty"`
	Created     time.Time  `json:"created"`
	LastUsed    *time.Time `json:"lastUsed,omitempty"`
	Status      string     `json:"status"`
	// Reason is why the key is in its status, shown on hover.
	Reason    string     `json:"reason,omitempty"`
	Expires   *time.Time `json:"expires,omitempty"`
	ExpiresIn string     `json:"expiresIn,omitempty"`
	Scopes    []string   `json:"scopes,omitempty"`
	// Actions are what can be done to the key in its state.
	Actions []string `json:"actions"`
}

// keysView is the API Keys page: the rows, the count and what the user may do.
type keysView struct {
	Namespace string    `json:"namespace"`
	Keys      []keyView `json:"keys"`
	Active    int       `json:"active"`
	CanCreate bool      `json:"canCreate"`
	CanChange bool      `json:"canChange"`
	// Notice says why something the user may expect is not offered.
	Notice string `json:"notice,omitempty"`
}

type sessionView struct {
	Namespace  string   `json:"namespace"`
	Namespaces []string `json:"namespaces"`
}

// session is the namespace the page opens on and those it may switch to:
// every namespace when the user may list them, else the kubeconfig's.
func (s *Server) session(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	v := sessionView{Namespace: s.cfg.Namespace, Namespaces: []string{s.cfg.Namespace}}
	var list corev1.NamespaceList
	if err := s.cfg.Client.List(ctx, &list); err == nil {
		for _, n := range list.Items {
			if n.Name != s.cfg.Namespace {
				v.Namespaces = append(v.Namespaces, n.Name)
			}
		}
		slices.Sort(v.Namespaces[1:])
	}
	answer(w, http.StatusOK, v)
}

func (s *Server) listKeys(w http.ResponseWriter, r *http.Request) {
	ns := r.PathValue("ns")
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	var list authv1alpha1.ApiKeyList
	if err := s.cfg.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
		fail(w, "listing the API keys of "+ns, err)
		return
	}
	now := s.cfg.Clock.Now()
	v := keysView{Namespace: ns, Keys: make([]keyView, 0, len(list.Items))}
	may := s.allowed(ctx, ns, []authorizationv1.ResourceAttributes{
		{Verb: "create", Group: authv1alpha1.GroupVersion.Group, Resource: "apikeys"},
		{Verb: "get", Resource: "secrets"},
		{Verb: "patch", Group: authv1alpha1.GroupVersion.Group, Resource: "apikeys"},
	})
	v.CanCreate, v.CanChange = may[0] && may[1], may[2]
	switch {
	case !v.CanCreate && !v.CanChange:
		v.Notice = "You can view the API keys of " + ns + " but not create or change them: your Kubernetes role allows only reading ApiKeys here. Ask an admin of the namespace for create and patch on apikeys.auth.latchkey.dev (and get on secrets)."
	case !v.CanCreate:
		v.Notice = "You cannot create API keys in " + ns + ": creating one needs create on apikeys.auth.latchkey.dev and get on secrets (to show the key once)."
	case !v.CanChange:
		v.Notice = "You cannot revoke, rotate, suspend or change the scopes of API keys in " + ns + ": that needs patch on apikeys.auth.latchkey.dev."
	}
	slices.SortFunc(list.Items, func(a, b authv1alpha1.ApiKey) int {
		if c := b.CreationTimestamp.Compare(a.CreationTimestamp.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	for i := range list.Items {
		row := s.row(&list.Items[i], now, v.CanChange)
		if row.Status == string(authv1alpha1.PhaseActive) {
			v.Active++
		}
		v.Keys = append(v.Keys, row)
	}
	answer(w, http.StatusOK, v)
}

func (s *Server) row(k *authv1alpha1.ApiKey, now time.Time, canChange bool) keyView {
	state := k.State(now)
	row := keyView{
		Name: k.Name, Description: k.Spec.Description, KeyHint: k.Status.KeyHint,
		Created: k.CreationTimestamp.UTC(), Status: string(state), Scopes: k.Spec.Scopes,
		ExpiresIn: s.cfg.Actions.ExpiresIn(k, now), Actions: []string{},
	}
	if k.Status.LastUsedAt != nil {
		t := k.Status.LastUsedAt.UTC()
		row.LastUsed = &t
	}
	if k.Spec.ExpiresAt != nil {
		t := k.Spec.ExpiresAt.UTC()
		row.Expires = &t
	}
	if c := meta.FindStatusCondition(k.Status.Conditions, authv1alpha1.ConditionReady); c != nil {
		row.Reason = c.Reason
		if c.Message != "" {
			row.Reason += ": " + c.Message
		}
	}
	if !canChange {
		return row
	}
	switch state {
	case authv1alpha1.PhaseActive:
		row.Actions = []string{actionRotate, actionSuspend, actionScopes, actionRevoke}
	case authv1alpha1.PhaseSuspended:
		row.Actions = []string{actionResume, actionScopes, actionRevoke}
	case authv1alpha1.PhasePending, authv1alpha1.PhaseFailed:
		row.Actions = []string{actionScopes, actionRevoke}
	}
	return row
}

// allowed asks the API server, all at once, whether the user may do each
// of what in ns. Only to decide what to offer: the API server still
// decides each request.
func (s *Server) allowed(ctx context.Context, ns string, what []authorizationv1.ResourceAttributes) []bool {
	may := make([]bool, len(what))
	var wg sync.WaitGroup
	for i := range what {
		wg.Go(func() {
			attrs := what[i]
			attrs.Namespace = ns
			review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &attrs}}
			may[i] = s.cfg.Client.Create(ctx, review) == nil && review.Status.Allowed
		})
	}
	wg.Wait()
	return may
}

// createdView carries a raw key this once.
type createdView struct {
	Name    string `json:"name"`
	KeyHint string `json:"keyHint"`
	Key     string `json:"key"`
}

type createRequest struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	// ExpiresInDays, when set, expires the key that many days from now.
	ExpiresInDays int      `json:"expiresInDays"`
	Scopes        []string `json:"scopes"`
}

// scopesRequest is the Scopes dialog's list: it replaces the key's.
type scopesRequest struct {
	Scopes []string `json:"scopes"`
}

// readRequest decodes the page's JSON body into v, answering 400 when it
// is not the page's.
func readRequest(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<14)).Decode(v); err != nil {
		answer(w, http.StatusBadRequest, problem{Message: "the request is not the page's: " + err.Error()})
		return false
	}
	return true
}

// maxExpiryDays bounds how far ahead the page may set an expiry.
const maxExpiryDays = 3650

func (s *Server) createKey(w http.ResponseWriter, r *http.Request) {
	ns := r.PathValue("ns")
	var req createRequest
	if !readRequest(w, r, &req) {
		return
	}
	msg := nameProblem(req.Name)
	if msg == "" {
		msg = scopesProblem(req.Scopes)
	}
	if msg != "" {
		answer(w, http.StatusBadRequest, problem{Message: msg})
		return
	}
	if req.ExpiresInDays < 0 || req.ExpiresInDays > maxExpiryDays {
		answer(w, http.StatusBadRequest, problem{Message: fmt.Sprintf("an expiry is 1 to %d days ahead, or none", maxExpiryDays)})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	key := &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: req.Name}}
	key.Spec.Description = strings.TrimSpace(req.Description)
	key.Spec.Scopes = req.Scopes
	if req.ExpiresInDays > 0 {
		at := metav1.NewTime(s.cfg.Clock.Now().Add(time.Duration(req.ExpiresInDays) * 24 * time.Hour).Truncate(time.Second))
		key.Spec.ExpiresAt = &at
	}
	raw, err := s.cfg.Actions.Create(ctx, s.cfg.Client, key)
	if err != nil {
		fail(w, "creating "+req.Name, err)
		return
	}
	answer(w, http.StatusCreated, createdView{Name: key.Name, KeyHint: key.Status.KeyHint, Key: raw})
}

// nameProblem says what is wrong with an ApiKey name, as the API server
// would, so that the page can say it before anything is created.
func nameProblem(name string) string {
	if name == "" {
		return "a name is required"
	}
	if len(name) > maxNameLength {
		return fmt.Sprintf("a name has at most %d characters", maxNameLength)
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return "the name must be a Kubernetes name: " + strings.Join(errs, "; ")
	}
	return ""
}

// scopesProblem says what is wrong with a list of scopes, as the API
// server's schema would.
func scopesProblem(scopes []string) string {
	if len(scopes) > authv1alpha1.MaxScopes {
		return fmt.Sprintf("a key has at most %d scopes", authv1alpha1.MaxScopes)
	}
	for i, sc := range scopes {
		if len(sc) > authv1alpha1.MaxScopeLength {
			return fmt.Sprintf("the scope %q is longer than %d characters", sc, authv1alpha1.MaxScopeLength)
		}
		if !scopeName.MatchString(sc) {
			return fmt.Sprintf("the scope %q is not a scope name: lowercase letters, digits, \"-\", \".\" and \":\", starting and ending with a letter or digit", sc)
		}
		if slices.Contains(scopes[:i], sc) {
			return fmt.Sprintf("the scope %q is listed twice", sc)
		}
	}
	return ""
}

// changedView is a key after a change; Key is set once, after a rotation.
type changedView struct {
	Name string `json:"name"`
	Key  string `json:"key,omitempty"`
}

func (s *Server) changeKey(w http.ResponseWriter, r *http.Request) {
	ns, name, action := r.PathValue("ns"), r.PathValue("name"), r.PathValue("action")
	var scopes scopesRequest
	if action == actionScopes {
		if !readRequest(w, r, &scopes) {
			return
		}
		if msg := scopesProblem(scopes.Scopes); msg != "" {
			answer(w, http.StatusBadRequest, problem{Message: msg})
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	key := &authv1alpha1.ApiKey{}
	if err := s.cfg.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, key); err != nil {
		fail(w, "reading "+name, err)
		return
	}
	v := changedView{Name: name}
	var err error
	switch action {
	case actionRevoke:
		err = s.cfg.Actions.Revoke(ctx, s.cfg.Client, key)
	case actionRotate:
		v.Key, err = s.cfg.Actions.Rotate(ctx, s.cfg.Client, key)
	case actionSuspend, actionResume:
		err = s.cfg.Actions.Suspend(ctx, s.cfg.Client, key, action == actionSuspend)
	case actionScopes:
		// A merge patch replaces the whole list, so that a scope the user
		// removed is gone: the verifier refuses it from then on.
		base := key.DeepCopy()
		key.Spec.Scopes = scopes.Scopes
		err = s.cfg.Client.Patch(ctx, key, client.MergeFrom(base))
	default:
		answer(w, http.StatusNotFound, problem{Message: "no action " + action})
		return
	}
	if err != nil {
		fail(w, action+" "+name, err)
		return
	}
	answer(w, http.StatusOK, v)
}

// usageView is the Usage page: the tenant's summary as the operator keeps it.
type usageView struct {
	Namespace string                   `json:"namespace"`
	Window    int32                    `json:"windowDays"`
	Status    authv1alpha1.UsageStatus `json:"status"`
	// Missing is set when the tenant has no Usage yet.
	Missing bool `json:"missing,omitempty"`
}

func (s *Server) usage(w http.ResponseWriter, r *http.Request) {
	ns := r.PathValue("ns")
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	u := &authv1alpha1.Usage{}
	err := s.cfg.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: authv1alpha1.UsageName}, u)
	if apierrors.IsNotFound(err) {
		answer(w, http.StatusOK, usageView{Namespace: ns, Missing: true})
		return
	}
	if err != nil {
		fail(w, "reading the usage of "+ns, err)
		return
	}
	v := usageView{Namespace: ns, Window: u.Spec.WindowDays, Status: u.Status}
	if v.Window == 0 {
		v.Window = int32(len(u.Status.Days))
	}
	answer(w, http.StatusOK, v)
}

// problem is a refusal the page shows as it is.
type problem struct {
	Message string `json:"message"`
}

// fail answers err as a readable message with the API server's status:
// the page shows a refusal, never a blank.
func fail(w http.ResponseWriter, doing string, err error) {
	status := http.StatusBadGateway
	var se apierrors.APIStatus
	if errors.As(err, &se) && se.Status().Code != 0 {
		status = int(se.Status().Code)
	}
	msg := err.Error()
	if apierrors.IsForbidden(err) {
		msg = "Kubernetes refused this (your role does not allow it): " + msg
	}
	if errors.Is(err, context.DeadlineExceeded) {
		status = http.StatusGatewayTimeout
	}
	answer(w, status, problem{Message: doing + ": " + msg})
}

// answer writes v as JSON that no cache keeps: answers may carry a raw key.
func answer(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
