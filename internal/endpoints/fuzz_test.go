package endpoints

import "testing"

func FuzzDecodeTokenReview(f *testing.F) {
	f.Add([]byte(reviewBody("lk_x")))
	f.Add([]byte(`{"apiVersion":"authentication.k8s.io/v1beta1","kind":"TokenReview","spec":{"token":"a","audiences":["x"]}}`))
	f.Add([]byte(`{`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, body []byte) {
		review, err := DecodeTokenReview(body)
		if err != nil {
			if review != nil {
				t.Fatal("a review and an error")
			}
			return
		}
		if review.Spec.Token == "" || review.Kind != "TokenReview" {
			t.Fatalf("accepted %+v", review)
		}
	})
}
