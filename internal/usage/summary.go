package usage

import (
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// Summarise computes a Usage status for the window of windowDays UTC days
// ending today. Executions count on the day they started.
func Summarise(l *Ledger, windowDays int, now time.Time) authv1alpha1.UsageStatus {
	today := now.UTC().Truncate(24 * time.Hour)
	start := today.AddDate(0, 0, -(windowDays - 1))
	byDate := map[string]authv1alpha1.LedgerDay{}
	for _, d := range l.Days {
		byDate[d.Date] = d
	}
	st := authv1alpha1.UsageStatus{WindowStart: &metav1.Time{Time: start}}
	var durationMillis int64
	for i := range windowDays {
		date := Day(start.AddDate(0, 0, i))
		d := byDate[date]
		st.Days = append(st.Days, authv1alpha1.UsageDay{
			Date: date, Total: d.Total, Succeeded: d.Succeeded, Failed: d.Failed,
			VerificationsAllowed: d.VerificationsAllowed, VerificationsDenied: d.VerificationsDenied,
		})
		st.Executions += d.Total
		st.Succeeded += d.Succeeded
		st.Failed += d.Failed
		durationMillis += d.DurationMillis
	}
	for _, f := range l.InFlight {
		if !time.UnixMilli(f.StartedAt).Before(start) {
			st.InFlight++
		}
	}
	if completed := st.Succeeded + st.Failed; completed > 0 {
		st.SuccessRate = strconv.FormatFloat(float64(st.Succeeded)*100/float64(completed), 'f', 1, 64)
		st.AverageDurationSeconds = strconv.FormatFloat(float64(durationMillis)/1000/float64(completed), 'f', 3, 64)
	}
	return st
}
