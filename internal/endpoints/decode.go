package endpoints

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	authnv1 "k8s.io/api/authentication/v1"
)

// readBody reads at most limit bytes of a request body.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return nil, fmt.Errorf("request body is larger than %d bytes", limit)
	}
	if err != nil {
		return nil, fmt.Errorf("reading request body: %w", err)
	}
	return body, nil
}

// DecodeTokenReview parses a TokenReview request. It accepts
// authentication.k8s.io/v1 and v1beta1 (the same shape; kube-apiserver's
// --authentication-token-webhook-version picks one) and answers in kind.
// Errors name what is wrong and never contain the token.
func DecodeTokenReview(body []byte) (*authnv1.TokenReview, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, errors.New("empty body: expected a TokenReview")
	}
	review := &authnv1.TokenReview{}
	if err := json.Unmarshal(body, review); err != nil {
		return nil, errors.New("body is not a JSON TokenReview")
	}
	switch review.APIVersion {
	case "authentication.k8s.io/v1", "authentication.k8s.io/v1beta1":
	default:
		return nil, errors.New("apiVersion must be authentication.k8s.io/v1 or authentication.k8s.io/v1beta1")
	}
	if review.Kind != "TokenReview" {
		return nil, errors.New("kind must be TokenReview")
	}
	if review.Spec.Token == "" {
		return nil, errors.New("spec.token is empty")
	}
	return review, nil
}
