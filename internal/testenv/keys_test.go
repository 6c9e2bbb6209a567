package testenv

import (
	"slices"
	"testing"
)

func TestKeyMaterialFindsTheKeyAndWhatItsHintHides(t *testing.T) {
	raw := "lk_0123456789abcdefghijklmnopqrstuv"
	places := map[string]string{
		"whole":  "x " + raw + " y",
		"hidden": "hint lk_01234… and then " + raw[8:len(raw)-4],
		"hint":   "lk_01234…stuv",
		"none":   "nothing here",
	}
	got := KeyMaterial([]string{raw}, places)
	slices.Sort(got)
	if want := []string{"hidden", "whole"}; !slices.Equal(got, want) {
		t.Fatalf("found in %v, want %v", got, want)
	}
}
